"""Anomaly-detection metrics: frame AUC-ROC, average precision, recall at a false-alert rate.

Example:
    >>> import numpy as np
    >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from forecasting.calibration import episodes


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half)."""
    y = np.asarray(labels).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(np.asarray(scores, np.float64))
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds (from the top score down)."""
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(~y[order])])
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise)."""
    y = np.asarray(labels).astype(bool)
    if not y.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ys = y[order]
    tp = np.cumsum(ys)
    precision = tp / np.arange(1, len(ys) + 1)
    return float((precision * ys).sum() / ys.sum())


@dataclass(frozen=True)
class RecallAtRate:
    """Operating point at a false-alert budget.

    Attributes:
        rate: false alerts per camera-hour allowed.
        threshold: the lowest threshold meeting the budget.
        false_per_hour: false alerts per hour at that threshold.
        event_recall: share of anomalous events (runs of anomalous frames) that overlap an alert.
        frame_recall: share of anomalous frames inside alert episodes.
    """

    rate: float
    threshold: float
    false_per_hour: float
    event_recall: float
    frame_recall: float


def _events(labels: np.ndarray) -> list[tuple[int, int]]:
    return episodes(np.asarray(labels, np.float64), 0.5)


def alert_outcome(
    clips: Sequence[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    min_duration: int = 1,
    spill: int = 60,
) -> tuple[int, int, int, int, int]:
    """``(false alerts, detected events, events, anomalous frames above, anomalous frames)``.

    Alert frames are the frames of episodes (runs above ``threshold`` lasting at least
    ``min_duration``). Every run of alert frames during *normal* frames is one false alert,
    unless it touches an anomalous event and lasts at most ``spill`` frames (an alert that
    starts a little early or ends a little late because of smoothing). So one alert spanning
    a whole clip is a false alert, not a free detection. An event (run of anomalous frames)
    is detected when alert frames overlap it.
    """
    false = hit = n_ev = fa_frames = n_frames = 0
    for scores, labels in clips:
        lab = np.asarray(labels[: len(scores)]) > 0
        sc = np.asarray(scores[: len(lab)])
        on = np.zeros(len(lab), bool)
        for s, e in episodes(sc, threshold, min_duration):
            on[s:e] = True
        for s, e in episodes((on & ~lab).astype(np.float64), 0.5):
            touches = (s > 0 and lab[s - 1]) or (e < len(lab) and lab[e])
            if not touches or e - s > spill:
                false += 1
        cum = np.concatenate([[0], np.cumsum(on)])
        evs = _events(lab)
        n_ev += len(evs)
        hit += sum(1 for s, e in evs if cum[e] - cum[s] > 0)
        fa_frames += int((on & lab).sum())
        n_frames += int(lab.sum())
    return false, hit, n_ev, fa_frames, n_frames


def recall_at_rates(
    clips: Sequence[tuple[np.ndarray, np.ndarray]],
    fps: float,
    rates: Sequence[float] = (1.0, 5.0),
    min_duration: int = 1,
    grid: int = 300,
    spill: int | None = None,
) -> list[RecallAtRate]:
    """Best event recall (then frame recall) over thresholds whose false alerts per hour <= rate.

    Arguments:
        clips: ``(frame scores, frame labels)`` per clip (smoothed scores, as alerting uses).
        fps: frame rate (for hours of normal footage).
        rates: false-alert budgets per camera-hour.
        min_duration: frames an alert episode must last.
        grid: thresholds tried: ``grid`` evenly spaced score quantiles plus ``grid`` quantiles
            log-spaced toward the top (down to one frame), where low false-alert budgets put
            the threshold. (An even grid alone skips the top 1/grid of the scores, where the
            only thresholds without a false alert can lie: recall then reads 0.)
        spill: see :func:`alert_outcome` (default 2 seconds).
    """
    spill = int(2 * fps) if spill is None else spill
    normal_frames = sum(int((np.asarray(lab[: len(s)]) == 0).sum()) for s, lab in clips)
    hours = normal_frames / fps / 3600
    allv = np.concatenate([s for s, _ in clips])
    tail = 1.0 - np.logspace(np.log10(1.0 / max(len(allv), 2)), 0.0, grid)
    qs = np.unique(np.quantile(allv, np.concatenate([np.linspace(0.0, 1.0, grid), tail])))
    qs = np.append(qs, qs[-1] + 1e-9)
    outcomes = [alert_outcome(clips, float(u), min_duration, spill) for u in qs]
    res = []
    for rate in rates:
        best = None
        for u, (false, hit, n_ev, fa, nf) in zip(qs, outcomes, strict=True):
            fph = false / hours if hours > 0 else float("inf")
            cand = RecallAtRate(rate, float(u), fph, hit / max(n_ev, 1), fa / max(nf, 1))
            if fph <= rate and (
                best is None
                or (cand.event_recall, cand.frame_recall) > (best.event_recall, best.frame_recall)
            ):
                best = cand
        assert best is not None  # the top threshold has no alert at all
        res.append(best)
    return res
