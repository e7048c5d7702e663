"""Alert episodes and the alert threshold an operator can live with.

An *episode* is a maximal run of frames whose (smoothed) score is above the threshold,
lasting at least ``min_duration`` frames; runs separated by fewer than ``merge_gap`` frames
count as one. False alerts are counted in episodes per camera-hour, not frames.

:func:`calibrate_threshold` picks the threshold whose expected false-alert rate on normal
footage equals the operator's target:

- where the normal data hold enough episodes at the target rate (``min_episodes``), a
  straight line is fitted to log(rate) over the thresholds whose rate is within a factor 3
  of the target (pooling neighbours smooths the episode-count noise);
- otherwise the curve's tail is extrapolated: ``log rate`` is fitted as a straight line in
  the threshold over the highest thresholds that still have ``min_episodes`` episodes. This
  is the exponential tail that negative log-likelihood scores have (the NLL of a Gaussian
  is a chi-square; its exceedances decay exponentially).

Example:
    >>> import numpy as np
    >>> episodes(np.array([0, 2, 2, 0, 0, 3, 0]), 1.0)
    [(1, 3), (5, 6)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def episodes(
    scores: np.ndarray, threshold: float, min_duration: int = 1, merge_gap: int = 0
) -> list[tuple[int, int]]:
    """``[(start, end_exclusive)]`` runs above ``threshold`` (see module docstring)."""
    above = np.asarray(scores) > threshold
    if not above.any():
        return []
    d = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    runs: list[tuple[int, int]] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if runs and s - runs[-1][1] < merge_gap:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((s, e))
    return [(s, e) for s, e in runs if e - s >= min_duration]


def count_episodes(
    streams: Sequence[np.ndarray], threshold: float, min_duration: int = 1, merge_gap: int = 0
) -> int:
    return sum(len(episodes(s, threshold, min_duration, merge_gap)) for s in streams)


def alert_rate(
    streams: Sequence[np.ndarray],
    threshold: float,
    fps: float,
    min_duration: int = 1,
    merge_gap: int = 0,
) -> float:
    """Episodes per hour of footage over normal score streams."""
    hours = sum(len(s) for s in streams) / fps / 3600
    return (
        count_episodes(streams, threshold, min_duration, merge_gap) / hours
        if hours > 0
        else float("nan")
    )


@dataclass(frozen=True)
class Calibration:
    """A fitted alert threshold.

    Attributes:
        threshold: the score above which (for ``min_duration`` frames) an alert starts.
        target_per_hour: the false-alert rate asked for.
        method: ``empirical``, ``extrapolated`` or ``capped`` (the extrapolated tail went
            beyond the highest normal score by more than the scores' spread: the threshold
            is put there; too little normal footage to say more); cold start's
            ``holdout-max`` (too few episodes to fit: the highest held-out score).
        fps: frames per second of the calibration footage.
        min_duration: frames an episode must last.
        hours: normal footage used.
        slope: fitted ``d log(rate) / d threshold`` of the tail (extrapolated only).
    """

    threshold: float
    target_per_hour: float
    method: str
    fps: float
    min_duration: int
    hours: float
    slope: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> Calibration | None:
        """The calibration in a checkpoint's ``calibration`` record (which also holds the
        serving fields and feedback), or None when it holds no threshold."""
        if not record or record.get("threshold") is None:
            return None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in known})


#: Calibration methods whose threshold was not fitted to the target rate: ``capped`` (the
#: normal footage's alert episodes did not thin out as the threshold rose: the highest normal
#: score plus its spread) and cold start's ``holdout-max`` (too few episodes to fit at all:
#: the highest held-out score).
UNFITTED = ("capped", "holdout-max")


def caveat(record: dict[str, Any]) -> str | None:
    """What an operator must know about a stored calibration ``record`` (a checkpoint's
    ``calibration``, or :meth:`Calibration.to_dict`), or None: a threshold whose method is
    one of :data:`UNFITTED` was not fitted to the target rate and may miss real events (or
    alert more often than asked). A record without a method (a bare ``threshold``) has none.

    Example:
        >>> caveat({"threshold": 5.0, "method": "empirical"}) is None
        True
        >>> caveat({"threshold": 5.0}) is None
        True
        >>> print(caveat({"threshold": 18.6, "method": "capped", "hours": 0.04,
        ...               "target_per_hour": 1.0}))  # doctest: +NORMALIZE_WHITESPACE
        the alert threshold 18.600 was not fitted (method capped): the 2.4 normal minutes
        calibrated on hold too few alert episodes that thin out as the threshold rises to
        read a threshold for 1 false alert per camera-hour, so it was set at the highest
        normal score plus its spread; it may miss real events. Calibrate on more normal
        footage of the camera served (posewatch calibrate --all-clips on its own footage,
        or a longer cold_start.learn_minutes)
    """
    method = record.get("method")
    if method not in UNFITTED:
        return None
    how = (
        "the highest normal score plus its spread"
        if method == "capped"
        else "the highest held-out score"
    )
    rate = record.get("target_per_hour", float("nan"))
    minutes = 60 * float(record.get("hours", float("nan")))
    return (
        f"the alert threshold {float(record.get('threshold', float('nan'))):.3f} was not "
        f"fitted (method {method}): the {minutes:.1f} normal minutes calibrated on hold too "
        "few alert episodes that thin out as the threshold rises to read a threshold for "
        f"{rate:g} false alert{'' if rate == 1 else 's'} per camera-hour, so it was set at "
        f"{how}; it may miss real events. Calibrate on more normal footage of the camera "
        "served (posewatch calibrate --all-clips on its own footage, or a longer "
        "cold_start.learn_minutes)"
    )


def calibrate_threshold(
    streams: Sequence[np.ndarray],
    fps: float,
    target_per_hour: float,
    min_duration: int = 1,
    merge_gap: int = 0,
    min_episodes: int = 5,
    grid: int = 400,
) -> Calibration:
    """Fit the threshold so that normal footage yields ``target_per_hour`` false alerts.

    Arguments:
        streams: smoothed frame-score series of normal footage (one per contiguous segment).
        fps: their frame rate.
        target_per_hour: alerts per camera-hour the operator accepts.
        min_duration: frames an episode must last (as the alerting will use).
        merge_gap: merge episodes closer than this (as the alerting will use).
        min_episodes: fewest episodes for a rate to be trusted empirically.
        grid: thresholds evaluated (score quantiles).
    """
    streams = [np.asarray(s, np.float64) for s in streams if len(s)]
    if not streams or target_per_hour <= 0:
        raise ValueError("calibration needs normal score streams and a positive target rate")
    hours = sum(len(s) for s in streams) / fps / 3600
    allv = np.concatenate(streams)
    # Log-spaced tail quantiles: the thresholds that matter have exceedance ~1e-4 or less.
    tail = np.geomspace(0.5, 0.5 / allv.size, grid)
    qs = np.unique(np.quantile(allv, 1.0 - tail))
    counts = np.array([count_episodes(streams, float(u), min_duration, merge_gap) for u in qs])
    rates = counts / hours
    trusted = counts >= min_episodes
    # Local fit: log(rate) is close to linear in the threshold over a factor of a few in rate
    # (exponential tail); pooling the neighbouring thresholds smooths the episode noise.
    near = trusted & (rates >= target_per_hour / 3) & (rates <= target_per_hour * 3)
    if near.sum() >= 3 and target_per_hour * hours >= min_episodes:
        b, a = np.polyfit(qs[near], np.log(rates[near]), 1)
        if b < 0:
            u = (np.log(target_per_hour) - a) / b
            return Calibration(
                float(u), target_per_hour, "empirical", fps, min_duration, hours, float(b)
            )
    # Extrapolate the tail: fit log(rate) ~ a + b * u over the highest trusted thresholds.
    tq = qs[trusted & (counts > 0)]
    tr = rates[trusted & (counts > 0)]
    if tq.size < 3:
        tq, tr = qs[counts > 0], rates[counts > 0]
    if tq.size < 2:
        raise ValueError(
            "too little normal footage to calibrate: fewer than two threshold levels have alerts"
        )
    lo = max(0, tq.size - max(3, tq.size // 3))
    b, a = np.polyfit(tq[lo:], np.log(tr[lo:]), 1)
    if b >= 0:
        raise ValueError(
            "cannot extrapolate the false-alert rate: it does not fall with the threshold"
        )
    u = (np.log(target_per_hour) - a) / b
    # A nearly flat tail (episodes that do not thin out as the threshold rises: few, long
    # ones in little footage) extrapolates to any number (3 minutes of white noise with
    # 15-frame alerts: 6e13, a threshold that never alerts). Beyond the highest normal score
    # by more than the scores' own spread the fit says nothing: the threshold is capped
    # there (method "capped"; calibrate on more normal footage).
    top = float(allv.max())
    reach = top + max(top - float(np.median(allv)), 1e-9)
    if not np.isfinite(u) or u > reach:
        return Calibration(reach, target_per_hour, "capped", fps, min_duration, hours, float(b))
    return Calibration(
        float(u), target_per_hour, "extrapolated", fps, min_duration, hours, float(b)
    )


def normal_segments(scores: np.ndarray, labels: np.ndarray, min_len: int = 1) -> list[np.ndarray]:
    """The contiguous runs of a score series whose labels are 0."""
    lab = np.zeros(len(scores), bool)
    n = min(len(labels), len(scores))
    lab[:n] = np.asarray(labels[:n]) > 0
    return [scores[s:e] for s, e in episodes((~lab).astype(np.float64), 0.5) if e - s >= min_len]
