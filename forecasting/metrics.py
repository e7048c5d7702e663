"""Forecast metrics over a set of sampled futures.

All distances are per-keypoint Euclidean distances in normalised units (fractions of the
person's size, see :mod:`forecasting.windows`), averaged over the visible keypoints of the
ground truth (``mask``) and over frames.

Shapes: ``samples (B, K, H, 17, 2)``, ``truth (B, H, 17, 2)``, ``mask (B, H, 17)`` bool,
``weights (B, K)`` normalised importance weights (optional; uniform when None).

Example:
    >>> import torch
    >>> truth = torch.zeros(1, 3, 17, 2); s = torch.zeros(1, 2, 3, 17, 2); s[:, 1] += 1.0
    >>> mask = torch.ones(1, 3, 17, dtype=torch.bool)
    >>> float(min_ade(s, truth, mask)[0]), round(float(apd(s)[0]), 4)
    (0.0, 1.4142)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Per-keypoint distances ``(..., H, 17)``."""
    return torch.linalg.vector_norm(a - b, dim=-1)


def _masked_mean(d: Tensor, mask: Tensor, dims: tuple[int, ...]) -> Tensor:
    m = mask.to(d.dtype)
    return (d * m).sum(dims) / m.sum(dims).clamp_min(1.0)


def ade_per_sample(samples: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """``(B, K)`` average displacement error of every sample."""
    d = _dist(samples, truth[:, None])
    return _masked_mean(d, mask[:, None].expand_as(d), (-1, -2))


def min_ade(samples: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` minADE@K: the best sample's average displacement error."""
    return ade_per_sample(samples, truth, mask).min(dim=1).values


def min_fde(samples: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """``(B,)`` minFDE@K: the best sample's error at the last future frame."""
    d = _dist(samples[:, :, -1], truth[:, None, -1])
    m = mask[:, None, -1].expand_as(d)
    return _masked_mean(d, m, (-1,)).min(dim=1).values


def ade_of_mean(
    samples: Tensor, truth: Tensor, mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """``(B,)`` error of the (weighted) sample mean."""
    if weights is None:
        mean = samples.mean(1)
    else:
        mean = (samples * weights[:, :, None, None, None]).sum(1)
    return _masked_mean(_dist(mean, truth), mask, (-1, -2))


def apd(samples: Tensor) -> Tensor:
    """``(B,)`` average pairwise distance between the K samples (diversity).

    Mean over pairs ``k != l`` of the mean per-keypoint distance over frames and keypoints.
    """
    K = samples.shape[1]
    if K < 2:
        return torch.zeros(samples.shape[0], dtype=samples.dtype)
    flat = samples.flatten(2)  # (B, K, H*17*2)
    n = flat.shape[-1] // 2
    pts = flat.reshape(flat.shape[0], K, n, 2)
    d = torch.linalg.vector_norm(pts[:, :, None] - pts[:, None], dim=-1).mean(-1)  # (B, K, K)
    return d.sum((1, 2)) / (K * (K - 1))


def energy_score(
    samples: Tensor, truth: Tensor, mask: Tensor, weights: Tensor | None = None
) -> Tensor:
    """``(B,)`` energy distance between the forecast distribution and the observed future.

    ``ES = 2 E||X - y|| - E||X - X'||`` over whole trajectories (a proper scoring rule:
    lower is better; it rewards both accuracy and calibrated spread). Masked keypoints are
    set to the truth so they do not count.
    """
    m = mask[:, None, :, :, None]
    s = torch.where(m, samples, truth[:, None])
    x = s.flatten(2)
    y = truth.flatten(1)
    K = x.shape[1]
    w = torch.full(x.shape[:2], 1.0 / K, dtype=x.dtype) if weights is None else weights
    term1 = (torch.linalg.vector_norm(x - y[:, None], dim=-1) * w).sum(1)
    pair = torch.cdist(x, x)
    term2 = torch.einsum("bk,bkl,bl->b", w, pair, w)
    return 2 * term1 - term2


def rank_histogram(samples: Tensor, truth: Tensor, mask: Tensor) -> Tensor:
    """``(K + 1,)`` counts of the truth's rank among the K samples, per visible coordinate.

    For every window, future frame, keypoint and axis whose truth is visible (``mask``),
    the rank is the number of the K sampled coordinates below the true one (0..K). A
    calibrated sample set gives a flat histogram (each rank ``1 / (K + 1)``); a set too wide
    piles ranks in the middle, too narrow at the two ends.

    Arguments:
        samples: ``(B, K, H, 17, 2)``; truth: ``(B, H, 17, 2)``; mask: ``(B, H, 17)``.

    Example:
        >>> s = torch.arange(3.0).reshape(1, 3, 1, 1, 1).expand(1, 3, 1, 17, 2)
        >>> t = torch.full((1, 1, 17, 2), 1.5)
        >>> rank_histogram(s, t, torch.ones(1, 1, 17, dtype=torch.bool)).tolist()
        [0, 0, 34, 0]
    """
    K = samples.shape[1]
    below = (samples < truth[:, None]).sum(1)  # (B, H, 17, 2)
    ranks = below[mask[..., None].expand_as(below)]
    return torch.bincount(ranks.flatten(), minlength=K + 1)


def rank_shares(hist: Tensor) -> tuple[float, float, float]:
    """From a :func:`rank_histogram`: the share of truths outside the samples' range (rank
    0 or K; calibrated ``2 / (K + 1)``), the share in the middle half of the ranks (those
    whose centre ``(r + 0.5) / (K + 1)`` lies in [0.25, 0.75]), and what a calibrated set
    gives for the latter (the count of those ranks over ``K + 1``: 21/43 = 0.488 at K = 42).
    NaN for an empty histogram.

    Example:
        >>> rank_shares(torch.tensor([1, 2, 2, 1]))
        (0.3333333333333333, 0.6666666666666666, 0.5)
    """
    K = len(hist) - 1
    centre = (torch.arange(K + 1, dtype=torch.float64) + 0.5) / (K + 1)
    mid = (centre >= 0.25) & (centre <= 0.75)
    expected = float(mid.sum()) / (K + 1)
    n = float(hist.sum())
    if n == 0:
        return math.nan, math.nan, expected
    return float(hist[0] + hist[K]) / n, float(hist[mid].sum()) / n, expected


def normalized_weights(log_weights: Tensor) -> Tensor:
    """``(B, K)`` self-normalised importance weights from path log-weights."""
    return torch.softmax(log_weights, dim=1)


def effective_sample_size(log_weights: Tensor) -> Tensor:
    """``(B,)`` Kish effective sample size of the importance weights."""
    w = normalized_weights(log_weights)
    return 1.0 / (w * w).sum(1)
