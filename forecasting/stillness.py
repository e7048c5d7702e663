"""Stillness: how much less a person moves in a window's future than in its observed past.

Every real keypoint track jitters: a detector never places a joint on the same pixel twice,
so even a person standing still moves ~0.001 person sizes per frame (AIHub2 test normal
windows: 1st percentile of the future's motion 0.0003, median 0.0023; walking ~0.01). A body
that *freezes* (stops dead, or a tracked person who stops breathing-level motion) drops far
below its own past, and that drop is what the posture flows cannot see (a still body is a
*likely* posture window) and best-of-K motion scorers barely see (a forecaster that predicts
a standing person standing has near-still futures among its K).

The stillness of a window is ``log(m_past + eps) - log(m_future + eps)``, with ``m`` the mean
keypoint displacement per frame (normalised units, keypoints seen or gap-filled in both
frames) over the observed frames and over the future (from the last observed frame on),
counting only keypoints really *seen* in both frames of a step (a keypoint the window
filled in, e.g. held at its last position while occluded, would look frozen);
``eps`` (:data:`EPS`, 1e-4: a tenth of the least jitter seen) keeps a motionless past or
future finite. It needs no model: normal windows centre near 0 (a person keeps their own
level of motion over a second) with a spread of ~0.3 (AIHub2 validation clips).

The fused scorer (:mod:`forecasting.posture`) adds its one-sided excess over what normal
held-out windows show (the part of the standardised stillness above their 99th percentile),
so it is 0 for ~99% of normal windows and large for a frozen body (injected freezes: ~10
standard deviations).

Shapes: ``poses (N, L, 17, 2)`` filled normalised windows, ``seen (N, L, 17)`` bool
(:class:`forecasting.windows.Windows` ``visible & mask``).
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

#: Floor of the motion per frame (normalised units) in the log ratio.
EPS: Final = 1e-4
#: Quantile of held-out normal windows' standardised stillness above which it counts.
HINGE_QUANTILE: Final = 0.99


def motion_per_frame(poses: Tensor, seen: Tensor, start: int, stop: int) -> Tensor:
    """``(N,)`` mean keypoint displacement per frame from frame ``start`` to ``stop - 1``
    (normalised units) over keypoints ``seen`` in both frames of a step; NaN for a window
    with no such keypoint."""
    x = poses[:, start:stop]
    d = torch.linalg.vector_norm(x[:, 1:] - x[:, :-1], dim=-1)  # (N, F - 1, V)
    m = seen[:, start:stop].bool()
    ok = (m[:, 1:] & m[:, :-1]).to(d.dtype)
    n = ok.sum((1, 2))
    return torch.where(n > 0, (d * ok).sum((1, 2)) / n.clamp_min(1), torch.nan)


def stillness(
    poses: Tensor, seen: Tensor, n_obs: int, eps: float = EPS, past: Tensor | None = None
) -> Tensor:
    """``(N,)`` log ratio of the observed past's motion to the future's (``n_obs`` observed
    frames; the future runs from the last observed frame to the window's end); 0 where either
    part has no keypoint seen in two successive frames (no evidence). ``past``: the windows'
    :func:`past_log_speed`, when the caller has it already.

    >>> still = torch.zeros(1, 24, 17, 2)
    >>> walk = torch.arange(24.0).reshape(1, 24, 1, 1).expand(1, 24, 17, 2) * 0.01
    >>> stop = walk.clone()
    >>> stop[:, 13:] = walk[:, 12:13]  # stops dead after frame 12
    >>> seen = torch.ones(1, 24, 17, dtype=torch.bool)
    >>> [round(float(stillness(p, seen, 13)), 2) + 0.0 for p in (still, walk, stop)]
    [0.0, 0.0, 4.96]
    """
    if past is None:
        past = past_log_speed(poses, seen, n_obs, eps)
    future = motion_per_frame(poses, seen, n_obs - 1, poses.shape[1])
    s = past - torch.log(future + eps)
    return torch.nan_to_num(s, nan=0.0)


def past_log_speed(poses: Tensor, seen: Tensor, n_obs: int, eps: float = EPS) -> Tensor:
    """``(N,)`` ``log(m_past + eps)``: the log of the observed frames' mean keypoint
    displacement per frame (:func:`motion_per_frame` over frames ``0 .. n_obs - 1``, keypoints
    ``seen`` in both frames of a step); NaN for a window with no such keypoint. How fast a
    person was moving before the future is scored: the fused score measures the motion part
    against normal people who moved alike (:meth:`forecasting.posture.PostureModel.fuse`).

    >>> walk = torch.arange(13.0).reshape(1, 13, 1, 1).expand(1, 13, 17, 2) * 0.01
    >>> round(float(past_log_speed(walk, torch.ones(1, 13, 17, dtype=torch.bool), 13)), 3)  # 0.01 * sqrt(2)
    -4.252
    """
    return torch.log(motion_per_frame(poses, seen, 0, n_obs) + eps)


__all__ = ["EPS", "HINGE_QUANTILE", "motion_per_frame", "past_log_speed", "stillness"]
