"""Operators' verdicts refine the alert threshold (``posewatch calibrate --feedback`` and
cold start).

What a verdict changes, exactly: the threshold fitted on normal footage (for the target
false-alert rate) is then

1. raised just above the highest peak score of the episodes marked **false alert**, as long
   as it stays below the lowest peak of the episodes marked **confirmed** (false alerts
   whose peak is at or above a confirmed one's cannot be silenced without losing it, and
   are counted as such);
2. lowered, if it lies at or above the lowest confirmed peak, to just below it (a confirmed
   alert must still fire).

It is never changed otherwise: with no verdicts the calibration stands. A verdict counts for
the camera it was given on (cold start: that camera; ``calibrate``: every camera, or
``--camera``). Peaks are those the model being calibrated gives: each episode's poses are
kept in the alert store (the person's frames over the episode and a scoring window before
it) and re-scored with exactly the scorer, sampler, K, stride and smoothing the threshold is
for, so verdicts survive retraining and a new scene model. An episode without stored poses
(read from the alerts topic by ``posewatch ui``) counts with its recorded peak only if the
same model scored it (same ``model.id`` and scorer); otherwise it is skipped and counted.

An episode counts as silenced when the threshold is at or above its peak (its smoothed
score never exceeds it), as kept when the threshold is below its peak.

Example:
    >>> fit_threshold(1.0, false_peaks=[1.5, 2.5], confirmed_peaks=[2.0])
    1.5000015
    >>> fit_threshold(3.0, false_peaks=[], confirmed_peaks=[2.0])
    1.999998
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.datasets import Clip
from detector.pose import MAX_FPS, MAX_FRAME_INDEX, MIN_FPS, Track
from forecasting.checkpoint import Checkpoint
from forecasting.frame_scores import smooth
from forecasting.scoring import ScorerConfig
from forecasting.windows import rate_ratio, too_slow
from pipelines.clip_scoring import score_clip
from pipelines.serving import ServingSpec
from pipelines.sinks.store import POSE_ROW, AlertStore, StoreError

log = logging.getLogger(__name__)


def _margin(v: float) -> float:
    return 1e-6 * max(1.0, abs(v))


def fit_threshold(
    calibrated: float, false_peaks: Sequence[float], confirmed_peaks: Sequence[float]
) -> float:
    """The threshold after the verdicts (see the module docstring)."""
    ceiling = min(confirmed_peaks, default=float("inf"))
    thr = calibrated
    below = [p for p in false_peaks if p < ceiling]
    if below and max(below) >= thr:
        top = max(below)
        thr = top + _margin(top)
        if thr >= ceiling:
            thr = (top + ceiling) / 2
    if thr >= ceiling:
        thr = ceiling - _margin(ceiling)
    return thr


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """What the verdicts did to a threshold."""

    calibrated: float
    threshold: float
    false_alerts: int = 0
    silenced: int = 0
    confirmed: int = 0
    kept: int = 0
    rescored: int = 0
    skipped: int = 0

    def note(self) -> str:
        """One line for the log and the calibration record."""
        if not self.false_alerts and not self.confirmed:
            return f"no verdicts to use ({self.skipped} of another model skipped)"
        return (
            f"verdicts: {self.false_alerts} false alerts, {self.silenced} of them now below the "
            f"threshold; {self.confirmed} confirmed, {self.kept} still above it; threshold "
            f"{self.calibrated:.4f} -> {self.threshold:.4f} ({self.rescored} episodes re-scored "
            f"by this model, {self.skipped} skipped: no poses and another model)"
        )

    def record(self) -> dict[str, float | int | str]:
        """Keys stored with the calibration."""
        return {
            "calibrated_threshold": self.calibrated,
            "feedback_false_alerts": self.false_alerts,
            "feedback_silenced": self.silenced,
            "feedback_confirmed": self.confirmed,
            "feedback_kept": self.kept,
            "feedback_note": self.note(),
        }


def stated_rate(
    rows: Sequence[Sequence[float]], model_fps: float
) -> tuple[float | None, Sequence[Sequence[float]]]:
    """The rate the stored frames stated (frames/s; None: none, so the live scorer took
    their indices as the model's frames) and the rows the live scorer scored on one time
    axis: the last run of rows whose rate puts them on the same axis
    (:func:`~forecasting.windows.rate_ratio` for a model of ``model_fps``; a reconnect
    that changed it started the live scorer's tracks over). Rows stored before the rate
    was (57 values) come from a scorer that took indices as model frames: None.

    >>> row = [0.0] * 55
    >>> fps, kept = stated_rate([[0, 0, *row, 0], [1, 0.1, *row, 15], [2, 0.2, *row, 15]], 30)
    >>> fps, [r[0] for r in kept]
    (15.0, [1, 2])
    >>> [r[0] for r in stated_rate([[0, 0, *row, 29.97], [1, 0.1, *row, 30]], 30)[1]]
    [0, 1]
    """
    if not rows or len(rows[-1]) <= POSE_ROW:
        return None, rows
    stated = [float(r[POSE_ROW]) if len(r) > POSE_ROW else 0.0 for r in rows]
    ratio = [rate_ratio(f or None, model_fps) for f in stated]
    start = len(rows) - 1
    while start > 0 and ratio[start - 1] == ratio[-1]:
        start -= 1
    fps = stated[-1]
    return (fps if MIN_FPS <= fps <= MAX_FPS else None), rows[start:]


def episode_peak(
    ckpt: Checkpoint, scorer: ScorerConfig, rows: Sequence[Sequence[float]], sigma: float,
    stride: int,
) -> float | None:  # fmt: skip
    """The highest causal-smoothed score ``ckpt`` gives the person's stored frames (rows of
    :meth:`~pipelines.sinks.store.AlertStore.add_poses`), placed on the model's time axis by
    their stream indices and the rate they stated, as live; None when too short to score,
    stated too slow for the model (never scored live), or malformed (logged)."""
    try:
        fps, rows = stated_rate(rows, ckpt.fps)
        if not rows:
            return None
        first = int(rows[0][0])
        frames: dict[int, tuple[np.ndarray, float]] = {}
        for r in rows:
            if not 0 <= float(r[0]) <= MAX_FRAME_INDEX:
                raise ValueError(f"frame index {r[0]!r}")
            kp = np.asarray(r[6:POSE_ROW], np.float32).reshape(17, 3)
            kp[~(kp[:, 2] > 0), :2] = np.nan
            frames.setdefault(int(r[0]) - first, (kp, 1.0))  # a repeat: live kept the first
    except (TypeError, ValueError, IndexError) as exc:
        log.warning("an episode's stored poses are malformed (%s); its verdict uses no poses", exc)
        return None
    if too_slow(fps, ckpt.fps, ckpt.window_config.max_gap) or min(frames) < 0:
        return None
    track = Track.from_rows(0, frames)
    clip = Clip("episode", Path("episode"), {0: track}, None)
    rates = (fps, ckpt.fps)  # scored on the model's time axis, as live
    cs = score_clip(ckpt.model, ckpt.window_config, clip, scorer, stride, rates, first)
    if not np.isfinite(cs.persons.get(0, np.array([np.nan]))).any():
        return None
    return float(np.nanmax(smooth(cs.frames, sigma, True)))


def apply_feedback(
    calibrated: float,
    ckpt: Checkpoint,
    scorer: ScorerConfig,
    store: str | Path | None,
    camera: str | None,
    sigma: float,
    stride: int,
) -> FeedbackOutcome:
    """The calibrated threshold after the verdicts of ``camera`` (None: every camera) in
    the alert store ``store`` (None or no file: unchanged)."""
    if store is None or not Path(store).is_file():
        return FeedbackOutcome(calibrated, calibrated)
    try:
        db = AlertStore(store, create=False)
    except StoreError as exc:
        log.warning("verdicts not used: %s", exc)
        return FeedbackOutcome(calibrated, calibrated)
    spec = ServingSpec.of(ckpt, scorer)
    name = f"gru-nf/{spec.sampler}/{spec.scorer}"
    peaks: dict[str, list[float]] = {"false_alert": [], "confirmed": []}
    rescored = skipped = 0
    try:
        for fb in db.feedback(camera):
            peak = episode_peak(ckpt, scorer, db.poses(fb.alert_id) or [], sigma, stride)
            if peak is not None:
                rescored += 1
            elif fb.model_id and fb.model_id == spec.model and fb.model_name == name:
                peak = fb.peak_score
            else:
                skipped += 1
                continue
            peaks[fb.verdict].append(peak)
    finally:
        db.close()
    thr = fit_threshold(calibrated, peaks["false_alert"], peaks["confirmed"])
    out = FeedbackOutcome(
        calibrated,
        thr,
        false_alerts=len(peaks["false_alert"]),
        silenced=sum(p <= thr for p in peaks["false_alert"]),
        confirmed=len(peaks["confirmed"]),
        kept=sum(p > thr for p in peaks["confirmed"]),
        rescored=rescored,
        skipped=skipped,
    )
    log.info("%s%s", f"{camera}: " if camera else "", out.note())
    return out


__all__ = [
    "FeedbackOutcome",
    "apply_feedback",
    "episode_peak",
    "fit_threshold",
    "stated_rate",
]
