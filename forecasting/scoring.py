"""Anomaly scores: how unlikely a person's observed motion is under the forecaster.

For a person at time t the window is ``1 + t_obs + horizon`` frames ending at t: the model
is conditioned on the ``t_obs`` frames before the last ``horizon`` frames and the last
``horizon`` observed frames are scored. Scorers (select by name):

- ``kde`` (default): draw K futures (GRU-NF or GRU-SNF; importance weights optional) and
  score each observed future keypoint by its negative log-likelihood under a Gaussian kernel
  density over the K sampled positions of that keypoint in that frame; bandwidth by
  Silverman's rule from the samples' spread, floored at ``min_bandwidth`` (normalised units)
  so a confidently still forecast does not turn detector jitter into alarms. Missing
  keypoints are masked. Per-joint contributions are the per-keypoint NLLs.
- ``nll``: the flow's exact teacher-forced ``-log p(future | past)`` per dimension; per-joint
  contributions from the point head's Gaussian residuals.
- ``minade``: the best of K samples' average displacement error; per-joint from that sample.

Shapes: ``poses (N, L, 17, 2)`` normalised windows, ``mask`` / ``visible (N, L, 17)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from forecasting.snf import GRU_NF, SamplerConfig
from forecasting.torch_model import GRUNF, to_tensor
from forecasting.windows import fill_unseen

ScorerName = Literal["kde", "nll", "minade"]
SCORERS: tuple[ScorerName, ...] = ("kde", "nll", "minade")


@dataclass(frozen=True)
class ScorerConfig:
    """How windows are scored.

    Attributes:
        name: ``kde``, ``nll`` or ``minade``.
        num_samples: K futures per window (``kde`` and ``minade``).
        sampler: GRU-NF or a GRU-SNF configuration.
        use_weights: weight samples by their SNF path weights (``kde``).
        min_bandwidth: bandwidth floor of the kernel density, normalised units.
        batch: windows per model call.
        seed: torch seed before scoring (reproducible scores).
    """

    name: ScorerName = "kde"
    num_samples: int = 20
    sampler: SamplerConfig = field(default_factory=lambda: GRU_NF)
    use_weights: bool = False
    min_bandwidth: float = 0.01
    batch: int = 256
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler"] = self.sampler.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScorerConfig:
        d = dict(d)
        d["sampler"] = SamplerConfig.from_dict(d.get("sampler", {}))
        return cls(**d)


class WindowScores(NamedTuple):
    """Scores of a batch of windows.

    Attributes:
        score: ``(N,)`` anomaly score (higher = more anomalous).
        joints: ``(N, 17)`` per-keypoint contribution (same units; NaN where never visible).
        forecast_s: seconds spent drawing the futures (the rest of the call is scoring).
    """

    score: np.ndarray
    joints: np.ndarray
    forecast_s: float = 0.0


def kde_nll(
    samples: Tensor,
    truth: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    min_bandwidth: float = 0.01,
) -> Tensor:
    """Per-keypoint NLL of the truth under a per-frame Gaussian KDE over the samples.

    Arguments:
        samples: ``(B, K, H, 17, 2)``.
        truth: ``(B, H, 17, 2)``.
        mask: ``(B, H, 17)`` bool (False entries return 0).
        weights: ``(B, K)`` normalised weights or None (uniform).
        min_bandwidth: bandwidth floor.

    Returns:
        ``(B, H, 17)`` negative log-density (nats, 2-D).
    """
    K = samples.shape[1]
    spread = samples.std(dim=1, unbiased=K > 1).mean(-1)  # (B, H, 17)
    bw = (spread * K ** (-1.0 / 6.0)).clamp_min(min_bandwidth)
    d2 = ((samples - truth[:, None]) ** 2).sum(-1)  # (B, K, H, 17)
    logk = -0.5 * d2 / bw[:, None] ** 2 - 2 * torch.log(bw[:, None]) - math.log(2 * math.pi)
    if weights is None:
        logw = torch.full((samples.shape[0], K), -math.log(K), dtype=samples.dtype)
    else:
        logw = torch.log(weights.clamp_min(1e-30))
    ll = torch.logsumexp(logk + logw[:, :, None, None], dim=1)
    return torch.where(mask, -ll, torch.zeros_like(ll))


def _masked_joint_mean(per: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``per (B, H, 17)`` -> score ``(B,)`` and per-joint mean ``(B, 17)`` over visible frames."""
    m = mask.to(per.dtype)
    score = (per * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1.0)
    cnt = m.sum(1)
    joints = (per * m).sum(1) / cnt.clamp_min(1.0)
    joints = torch.where(cnt > 0, joints, torch.full_like(joints, math.nan))
    return score, joints


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def score_windows(
    model: GRUNF,
    poses: np.ndarray,
    mask: np.ndarray,
    visible: np.ndarray,
    cfg: ScorerConfig,
) -> WindowScores:
    """Score windows with the configured scorer, batched.

    Arguments:
        model: trained forecaster (its ``cfg.t_obs`` / ``cfg.horizon`` fix the window).
        poses: ``(N, 1 + t_obs + horizon, 17, 2)`` normalised windows, NaN where missing.
        mask: ``(N, L, 17)`` seen-or-filled keypoints.
        visible: ``(N, L, 17)`` really-seen keypoints (only these are scored).
        cfg: scorer configuration.
    """
    n = poses.shape[0]
    if n == 0:
        return WindowScores(np.zeros(0, np.float32), np.zeros((0, 17), np.float32))
    device = next(model.parameters()).device
    std = model.standardizer()
    n_obs = 1 + model.cfg.t_obs
    P = to_tensor(fill_unseen(poses, std.pose_mean), device)
    M = to_tensor(mask, device)
    V = to_tensor(visible[:, n_obs:] & mask[:, n_obs:], device)
    torch.manual_seed(cfg.seed)
    scores, joints = [], []
    forecast_s = 0.0
    grad_ok = cfg.sampler.kernel == "mala"
    ctx = torch.no_grad() if grad_ok else torch.inference_mode()
    with ctx:
        for sl in _batches(n, cfg.batch):
            p, m, v = P[sl], M[sl], V[sl]
            truth = p[:, n_obs:]
            if cfg.name == "nll":
                s, j = _nll_scores(model, p, m, v)
            else:
                t_fc = time.perf_counter()
                out = model.sample(p[:, :n_obs], m[:, :n_obs], None, cfg.num_samples, cfg.sampler)
                forecast_s += time.perf_counter() - t_fc
                smp = out.poses
                if cfg.name == "kde":
                    w = torch.softmax(out.log_weights, 1) if cfg.use_weights else None
                    per = kde_nll(smp, truth, v, w, cfg.min_bandwidth)
                    s, j = _masked_joint_mean(per, v)
                elif cfg.name == "minade":
                    d = torch.linalg.vector_norm(smp - truth[:, None], dim=-1)  # (B, K, H, 17)
                    vm = v[:, None].to(d.dtype)
                    ade = (d * vm).sum((2, 3)) / vm.sum((2, 3)).clamp_min(1.0)
                    best = ade.argmin(1)
                    dbest = d[torch.arange(d.shape[0]), best]
                    s = ade.min(1).values
                    _, j = _masked_joint_mean(dbest, v)
                else:
                    raise ValueError(
                        f"unknown scorer {cfg.name!r}; choose from {', '.join(SCORERS)}"
                    )
            scores.append(s.float().cpu())
            joints.append(j.float().cpu())
    return WindowScores(torch.cat(scores).numpy(), torch.cat(joints).numpy(), forecast_s)


def _nll_scores(model: GRUNF, p: Tensor, m: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out = model(p, m, first=1 + model.cfg.t_obs)
    s = -out.log_prob.mean(1) / (2 * 17)
    # Per joint: the point head's standardised squared residuals (cheap, decomposable).
    feats, target = model.features(p, m)
    hs, _ = model.gru(feats)
    h = hs[:, model.cfg.t_obs - 1 : -1]
    r = (target[:, model.cfg.t_obs :] - model.point(h)) * torch.exp(-model.point_log_scale)
    per = 0.5 * (r * r).reshape(*r.shape[:2], 17, 2).sum(-1)
    _, j = _masked_joint_mean(per, v)
    return s, j
