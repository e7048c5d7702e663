"""GRU-NF: a GRU over normalised pose frames conditioning a flow over the next displacement.

References: arXiv 2504.05537 (GRU-NF for keypoint motion), arXiv 2512.04282 (GRU-SNF, the
stochastic refinement at sampling time, :mod:`forecasting.snf`). Differences from the
authors' code: per-sample autoregressive rollouts (each sample keeps its own GRU state),
a trained point head, displacement (not absolute-frame) density, visibility masks.

Shapes: ``poses (N, T, 17, 2)`` normalised coordinates (see :mod:`forecasting.windows`),
``mask (N, T, 17)`` bool. A frame's input feature is its standardised pose (34), its
standardised displacement from the previous frame (34) and its mask (17); the flow models
the next frame's standardised displacement (34).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from forecasting.flow import ConditionalFlow, default_masks, diag_normal_logpdf, pose_masks
from forecasting.snf import GRU_NF, SamplerConfig, StepStats, StochasticFlowSampler
from forecasting.windows import Standardizer

J = 17
D = 2 * J


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`GRUNF`.

    Attributes:
        t_obs: observed frames of a window.
        horizon: future frames of a window.
        hidden: GRU width.
        gru_layers: GRU depth.
        flow_layers: coupling layers (one conditional affine layer is added on top).
        flow_hidden: coupling width.
        embed_dim: shared context embedding of the flow.
        burn_in: predicted frames before this many observed frames are not in the loss.
        clip: standardised inputs and targets are clipped to ``[-clip, clip]``.
        max_log_scale: bound of the couplings' log-scales.
    """

    t_obs: int = 12
    horizon: int = 12
    hidden: int = 192
    gru_layers: int = 1
    flow_layers: int = 6
    flow_hidden: int = 128
    embed_dim: int = 64
    burn_in: int = 2
    clip: float = 8.0
    max_log_scale: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ForwardOutput(NamedTuple):
    """Teacher-forced densities.

    Attributes:
        log_prob: ``(N, T')`` flow log-density of each predicted frame's displacement.
        point_log_prob: ``(N, T')`` point head's Gaussian log-density of the same.
        first: index (in window frames) of the first predicted frame, so column ``j`` is
            window frame ``first + j``.
    """

    log_prob: Tensor
    point_log_prob: Tensor
    first: int


class SampleOutput(NamedTuple):
    """Sampled futures.

    Attributes:
        poses: ``(B, K, H, 17, 2)`` normalised coordinates of the sampled future frames.
        log_weights: ``(B, K)`` SNF path log-weights toward the model density (0 for GRU-NF).
        stats: MCMC acceptance counts and step sizes per block.
    """

    poses: Tensor
    log_weights: Tensor
    stats: StepStats


class GRUNF(nn.Module):
    """GRU + conditional flow over the next frame's displacement, with a point head.

    Arguments:
        cfg: architecture.
        std: standardisation statistics fitted on training windows.
    """

    pose_mean: Tensor
    pose_std: Tensor
    disp_mean: Tensor
    disp_std: Tensor
    error_scale: Tensor

    def __init__(self, cfg: ModelConfig, std: Standardizer):
        super().__init__()
        self.cfg = cfg
        for name in ("pose_mean", "pose_std", "disp_mean", "disp_std"):
            self.register_buffer(name, torch.as_tensor(getattr(std, name), dtype=torch.float32))
        # Typical forecast error of each joint on held-out normal motion (set after training by
        # ``forecasting.scoring.fit_error_scale``; ones = unscaled). The min*de scorers divide
        # each joint's error by it, so jittery joints do not drown out stable ones.
        self.register_buffer("error_scale", torch.ones(J))
        self.gru = nn.GRU(2 * D + J, cfg.hidden, cfg.gru_layers, batch_first=True)
        self.flow = ConditionalFlow(
            D,
            cfg.hidden,
            hidden=cfg.flow_hidden,
            layers=cfg.flow_layers,
            masks=default_masks(D, cfg.flow_layers, pose_masks(J)),
            embed_dim=cfg.embed_dim,
            max_log_scale=cfg.max_log_scale,
        )
        self.point = nn.Linear(cfg.hidden, D)
        nn.init.zeros_(self.point.weight)
        nn.init.zeros_(self.point.bias)
        self.point_log_scale = nn.Parameter(torch.zeros(D))

    # -- features ------------------------------------------------------------------------------
    def standardizer(self) -> Standardizer:
        return Standardizer(
            *(
                getattr(self, n).cpu().numpy()
                for n in ("pose_mean", "pose_std", "disp_mean", "disp_std")
            )
        )

    def features(self, poses: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs and flow targets of frames ``1 .. T-1``.

        Arguments:
            poses: ``(N, T, 17, 2)`` normalised; entries where ``mask`` is False are ignored.
            mask: ``(N, T, 17)`` bool.

        Returns:
            ``feats (N, T-1, 85)`` and ``disp (N, T-1, 34)`` standardised displacements
            (0 where either end is masked).
        """
        N, T = poses.shape[:2]
        P = poses.reshape(N, T, D)
        m = mask.float()
        m2 = m.repeat_interleave(2, dim=-1)
        fp = (P - self.pose_mean) / self.pose_std * m2
        both = m2[:, 1:] * m2[:, :-1]
        fd = ((P[:, 1:] - P[:, :-1]) - self.disp_mean) / self.disp_std * both
        # Winsorise: pose-estimator glitches give displacements of tens of standard
        # deviations; fitting them forces extreme coupling scales (an ill-conditioned flow).
        fp = torch.nan_to_num(fp).clamp(-self.cfg.clip, self.cfg.clip)
        fd = torch.nan_to_num(fd).clamp(-self.cfg.clip, self.cfg.clip)
        return torch.cat([fp[:, 1:], fd, m[:, 1:]], dim=-1), fd

    # -- densities -----------------------------------------------------------------------------
    def point_log_prob(self, h: Tensor, x: Tensor) -> Tensor:
        """``h (N, C), x (N, 34) -> (N,)`` log-density under the point head's Gaussian."""
        return diag_normal_logpdf(x, self.point(h), self.point_log_scale)

    def forward(self, poses: Tensor, mask: Tensor, first: int | None = None) -> ForwardOutput:
        """Teacher-forced log-densities of every frame from ``first`` on.

        Arguments:
            poses: ``(N, T, 17, 2)`` windows (frame 0 only gives a displacement).
            mask: ``(N, T, 17)``.
            first: first window frame whose density is returned (default ``1 + burn_in``;
                use ``1 + t_obs`` for the future of a window).
        """
        first = 1 + self.cfg.burn_in if first is None else first
        feats, target = self.features(poses, mask)
        out, _ = self.gru(feats)  # out[:, i] = state after window frame i + 1
        N = out.shape[0]
        h = out[:, first - 2 : -1]  # states after frames first-1 .. T-2
        x = target[:, first - 1 :]  # displacements of frames first .. T-1
        Tp = x.shape[1]
        hf = h.reshape(N * Tp, -1)
        xf = x.reshape(N * Tp, D)
        ctx = self.flow.context(hf)
        lp = self.flow.log_prob(xf, ctx).reshape(N, Tp)
        pl = self.point_log_prob(hf, xf).reshape(N, Tp)
        return ForwardOutput(lp, pl, first)

    def log_prob(self, poses: Tensor, mask: Tensor) -> Tensor:
        """``(N,)`` exact ``log p(future | past)`` (sum over the horizon, standardised units)."""
        return self.forward(poses, mask, first=1 + self.cfg.t_obs).log_prob.sum(-1)

    # -- sampling ------------------------------------------------------------------------------
    def encode(self, poses: Tensor, mask: Tensor) -> Tensor:
        """``(B, 1 + t_obs, 17, 2) -> (layers, B, hidden)`` GRU state after the observed frames."""
        feats, _ = self.features(poses, mask)
        _, h = self.gru(feats)
        return h

    def sample(
        self,
        past: Tensor,
        past_mask: Tensor,
        horizon: int | None = None,
        num_samples: int = 20,
        sampler: SamplerConfig = GRU_NF,
        generator_seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Draw ``K`` future trajectories per window by autoregressive rollouts.

        Arguments:
            past: ``(B, 1 + t_obs, 17, 2)`` normalised observed frames (frame 0 gives a
                displacement only).
            past_mask: ``(B, 1 + t_obs, 17)``.
            horizon: future frames (default ``cfg.horizon``).
            num_samples: ``K``.
            sampler: GRU-NF (default) or a GRU-SNF configuration.
            generator_seed: seed torch's global generator first (reproducible draws).
            generator: draw from this generator instead of torch's global one (reproducible
                draws while other threads use the global generator).

        Returns:
            :class:`SampleOutput` with poses ``(B, K, H, 17, 2)``.
        """
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        ctx_mode = torch.no_grad() if sampler.kernel == "mala" else torch.inference_mode()
        with ctx_mode:
            H = horizon or self.cfg.horizon
            return self._sample(past, past_mask, H, num_samples, sampler, generator)

    def _sample(
        self,
        past: Tensor,
        past_mask: Tensor,
        H: int,
        K: int,
        sampler: SamplerConfig,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        B = past.shape[0]
        h = self.encode(past, past_mask)
        mean_fb = sampler.mean_feedback
        if not mean_fb:
            h = h.repeat_interleave(K, dim=1)
        pm = self.pose_mean.reshape(J, 2)
        last = torch.where(past_mask[:, -1, :, None], torch.nan_to_num(past[:, -1]), pm)
        P = last.reshape(B, D)
        P = P.repeat_interleave(K, dim=0)  # (B*K, D)
        snf = StochasticFlowSampler(self.flow, sampler, device=past.device, generator=generator)
        logw = torch.zeros(B * K, device=past.device)
        out = torch.empty(H, B * K, D, device=past.device)
        ones = torch.ones(B * K if not mean_fb else B, J, device=past.device)
        for t in range(H):
            state = h[-1]
            if mean_fb:
                state = state.repeat_interleave(K, dim=0)
            ctx = self.flow.context(state)
            point = (self.point(state), self.point_log_scale) if sampler.target == "point" else None
            z = torch.randn(B * K, D, device=past.device, generator=generator)
            if sampler.temperature != 1.0:
                z = z * sampler.temperature
            x, lw = snf.sample(z, ctx, point)
            x = x.clamp(-self.cfg.clip, self.cfg.clip)
            logw = logw + lw
            P = P + x * self.disp_std + self.disp_mean
            out[t] = P
            if mean_fb:
                Pm = P.reshape(B, K, D).mean(1)
                xm = x.reshape(B, K, D).mean(1)
                P = Pm.repeat_interleave(K, dim=0)
                inp = torch.cat([(Pm - self.pose_mean) / self.pose_std, xm, ones], -1)
            else:
                inp = torch.cat([(P - self.pose_mean) / self.pose_std, x, ones], -1)
            _, h = self.gru(inp[:, None], h)
        poses = out.reshape(H, B, K, J, 2).permute(1, 2, 0, 3, 4)
        return SampleOutput(poses, logw.reshape(B, K), snf.stats())


def to_tensor(a: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """numpy -> torch on ``device`` (float32 for floats)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if t.is_floating_point():
        t = t.float()
    return t.to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nll_per_dim(log_prob_sum: float, n_frames: int) -> float:
    """Average negative log-likelihood per frame and dimension (nats)."""
    return -log_prob_sum / max(n_frames, 1) / D if n_frames else math.nan


class Ensemble(nn.Module):
    """GRU-NF members trained from different seeds, used as one mixture forecaster.

    Sampling splits the ``K`` futures evenly across the members (draws from the equal-weight
    mixture at the cost of one model's rollouts); the exact density is the mixture's.
    Members share the architecture and the standardisation (same training windows).
    Single-model forecasters and ensembles are interchangeable for scoring
    (:data:`Forecaster`).

    Arguments:
        members: trained :class:`GRUNF` models (at least one).
    """

    error_scale: Tensor

    def __init__(self, members: list[GRUNF]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.cfg = members[0].cfg
        # Typical best-of-K error of the ensemble's own samples (see GRUNF.error_scale).
        self.register_buffer("error_scale", torch.ones(J))

    def member_list(self) -> list[GRUNF]:
        return [m for m in self.members if isinstance(m, GRUNF)]

    @property
    def flow(self) -> ConditionalFlow:
        """The first member's flow (its architecture is every member's)."""
        return self.member_list()[0].flow

    def standardizer(self) -> Standardizer:
        return self.member_list()[0].standardizer()

    def log_prob(self, poses: Tensor, mask: Tensor) -> Tensor:
        """``(N,)`` exact mixture ``log p(future | past)`` (equal member weights)."""
        lp = torch.stack([m.log_prob(poses, mask) for m in self.member_list()])
        return torch.logsumexp(lp, 0) - math.log(lp.shape[0])

    def sample(
        self,
        past: Tensor,
        past_mask: Tensor,
        horizon: int | None = None,
        num_samples: int = 20,
        sampler: SamplerConfig = GRU_NF,
        generator_seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """:meth:`GRUNF.sample` of the mixture: member ``i`` draws ``K // M`` (+1 for the first
        ``K % M``) of the ``K`` futures; the samples are concatenated member by member."""
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        members = self.member_list()
        M = len(members)
        ks = [num_samples // M + (i < num_samples % M) for i in range(M)]
        outs = [
            m.sample(past, past_mask, horizon, k, sampler, generator=generator)
            for m, k in zip(members, ks, strict=True)
            if k
        ]
        accepted = torch.stack([o.stats.accepted for o in outs]).sum(0)
        proposed = torch.stack([o.stats.proposed for o in outs]).sum(0)
        stats = StepStats(accepted, proposed, outs[-1].stats.step_sizes)
        return SampleOutput(
            torch.cat([o.poses for o in outs], 1),
            torch.cat([o.log_weights for o in outs], 1),
            stats,
        )


#: What scoring and evaluation accept: one model or an ensemble of them.
Forecaster = GRUNF | Ensemble
