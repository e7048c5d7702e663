"""From window scores to frame scores: placement, the worst person, smoothing.

The same functions serve offline evaluation and the live service.

- A window's score is placed on its **last frame** (``end``: causal, what the service
  knows at that frame) or spread over the frames of its scored future part (``cover``:
  each frame gets the mean of the windows whose future covers it; non-causal).
- Frame score = the most anomalous person in the frame. Frames in which no person has a
  score (nobody there, or a track too young to be scored) get the ``empty`` value; offline
  that is the clip's lowest score (the most normal one), as STG-NF does.
- Smoothing is Gaussian with ``sigma`` frames: ``causal=False`` is the symmetric filter used
  for offline comparison with the literature; ``causal=True`` uses only the current and past
  frames (a half-Gaussian kernel), which is what the live service can do without delay.

Example:
    >>> import numpy as np
    >>> s = person_frame_scores(np.array([4, 5]), np.array([1.0, 3.0]), 8)
    >>> s.tolist()[3:7]
    [nan, 1.0, 3.0, nan]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter1d

Placement = Literal["end", "cover"]


def person_frame_scores(
    frames: np.ndarray,
    scores: np.ndarray,
    num_frames: int,
    placement: Placement = "end",
    horizon: int = 1,
    frame_step: int = 1,
) -> np.ndarray:
    """One person's scores on the clip's frame axis.

    Arguments:
        frames: ``(n,)`` frame index of each window's last frame.
        scores: ``(n,)`` window scores.
        num_frames: length of the clip's frame axis.
        placement: ``end`` or ``cover`` (see module docstring).
        horizon: scored future frames per window (``cover``).
        frame_step: frames between two window rows (``cover``).

    Returns:
        ``(num_frames,)`` float64, NaN where the person has no score.
    """
    out = np.full(num_frames, np.nan)
    frames = np.asarray(frames, np.int64)
    scores = np.asarray(scores, np.float64)
    ok = (frames >= 0) & (frames < num_frames) & np.isfinite(scores)
    frames, scores = frames[ok], scores[ok]
    if placement == "end":
        out[frames] = scores
        return out
    total = np.zeros(num_frames)
    count = np.zeros(num_frames)
    span = (horizon - 1) * frame_step
    for off in range(span + 1):
        f = frames - off
        keep = f >= 0
        np.add.at(total, f[keep], scores[keep])
        np.add.at(count, f[keep], 1)
    has = count > 0
    out[has] = total[has] / count[has]
    return out


def worst_person(
    per_person: Sequence[np.ndarray], num_frames: int, empty: float | None = None
) -> np.ndarray:
    """Frame score = max over persons; frames with no score get ``empty``.

    Arguments:
        per_person: ``(num_frames,)`` arrays with NaN where a person has no score.
        num_frames: clip length.
        empty: value for frames without any score; None = the lowest score of the clip
            (0 when the clip has no score at all).
    """
    if per_person:
        stack = np.vstack([np.asarray(p, np.float64) for p in per_person])
        has = np.isfinite(stack).any(axis=0)
        frame = np.full(num_frames, np.nan)
        frame[has] = np.nanmax(stack[:, has], axis=0)
    else:
        frame = np.full(num_frames, np.nan)
    if empty is None:
        empty = float(np.nanmin(frame)) if np.isfinite(frame).any() else 0.0
    return np.where(np.isfinite(frame), frame, empty)


def causal_kernel(sigma: float) -> np.ndarray:
    """Half-Gaussian weights for lags ``0 .. ceil(3 sigma)``, summing to 1."""
    lags = np.arange(int(np.ceil(3 * sigma)) + 1)
    w = np.exp(-0.5 * (lags / sigma) ** 2)
    return w / w.sum()


def smooth(scores: np.ndarray, sigma: float, causal: bool = False) -> np.ndarray:
    """Gaussian temporal smoothing of a frame-score series.

    Arguments:
        scores: ``(T,)`` frame scores.
        sigma: standard deviation in frames (``<= 0``: no smoothing).
        causal: use only current and past frames.
    """
    x = np.asarray(scores, np.float64)
    if sigma <= 0 or x.size == 0:
        return x.copy()
    if not causal:
        return gaussian_filter1d(x, sigma, mode="nearest")
    w = causal_kernel(sigma)
    padded = np.concatenate([np.full(len(w) - 1, x[0]), x])
    return np.convolve(padded, w, mode="valid")


class CausalSmoother:
    """Streaming version of ``smooth(..., causal=True)`` for one series (the live service).

    Example:
        >>> sm = CausalSmoother(2.0); x = [0.0, 1.0, 5.0, 2.0]
        >>> ys = [sm.update(v) for v in x]
        >>> bool(np.allclose(ys, smooth(np.array(x), 2.0, causal=True)))
        True
    """

    def __init__(self, sigma: float):
        self.w = causal_kernel(sigma) if sigma > 0 else np.ones(1)
        self.buf: list[float] = []

    def update(self, value: float, after: int = 1) -> float:
        """The smoothed value at ``value``, which comes ``after`` frames after the previous
        one: the previous value holds over the frames between (as offline frame scores hold
        a score until the next, :func:`pipelines.clip_scoring.score_clip`), so ``sigma``
        counts frames, not scores.

        >>> sm, held = CausalSmoother(2.0), CausalSmoother(2.0)
        >>> _ = sm.update(0.0), held.update(0.0)
        >>> [sm.update(v) for v in (0.0, 0.0, 3.0)][-1] == held.update(3.0, after=3)
        True
        """
        if not self.buf:
            self.buf = [value] * len(self.w)
        else:
            k = min(max(1, after), len(self.buf))
            self.buf.extend([self.buf[-1]] * (k - 1) + [value])
            del self.buf[:k]
        return float(np.dot(self.w, self.buf[::-1]))
