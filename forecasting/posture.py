"""Posture flows: how unlikely a person's body configuration over a window is.

The forecaster scores *motion* (does the observed future follow from the past?); it cannot
see a posture that is unusual but moves predictably (a person lying still, crouching over
someone, arms raised throughout). A posture flow scores the whole window's keypoints
jointly: a Glow over ``(x, y) x frames x 17 joints`` whose affine couplings are spatial-
temporal graph convolutions (the STG-NF design, Hirschorn & Avidan, ICCV 2023, here on COCO's
17-joint skeleton), prior ``N(3, 1)``, trained by maximum likelihood on normal windows.

Input per window: the last ``frames`` frames of a scoring window (posewatch's normalised
coordinates, missing keypoints filled with the training mean pose), centred on the window's
mean and divided by its vertical spread (STG-NF's per-window normalisation).

Single flows of this size (616 parameters) are unstable across seeds: STG-NF's own AUC on
AIHub2 ranges 43-92 over 10 seeds (``../shared/benchmarks/anchors.md``). A
:class:`PostureModel` therefore holds several flows, each trained from its own seed with the
epoch chosen on held-out normal windows, and scores by the mean of their standardised
negative log-likelihoods (each flow's NLL minus its mean on held-out normal windows, over its
standard deviation there), so no single flow's failure decides.

The *fused* score (:meth:`PostureModel.fuse`) adds that posture score to the motion score,
both in units of their spread on held-out normal windows: ``z_motion + weight * z_posture``,
plus the stillness term's excess over normal (:mod:`forecasting.stillness`): a frozen body is
a likely posture window, so without it the posture part cancels the motion part's evidence
of a freeze. With ``speed_conditioned`` the motion part is measured against normal people
who moved alike before the scored future: ``minhde`` is largely a measure of speed (a
standing person's future is forecast almost exactly, a walker's less so), so pooled over
both a standing person's anomaly scored below a normal walker.

Shapes: ``poses (N, L, 17, 2)`` as in :mod:`forecasting.scoring`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from forecasting.allocator import retain_freed_memory
from forecasting.defaults import (
    POSTURE_EPOCHS,
    POSTURE_FLOWS,
    POSTURE_UPRIGHT,
    POSTURE_UPRIGHT_FRAMES,
    POSTURE_WEIGHT,
    POSTURE_YAW,
)
from forecasting.stillness import HINGE_QUANTILE, past_log_speed, stillness
from forecasting.weights_cache import WeightsCache
from forecasting.windows import HIPS, SHOULDERS

#: COCO-17 skeleton (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (0, 5), (0, 6),
)  # fmt: skip
PRIOR_MEAN = 3.0


def hop_adjacency(edges: tuple[tuple[int, int], ...], joints: int, max_hop: int) -> Tensor:
    """Uniform-strategy adjacency: 1 between joints at most ``max_hop`` hops apart,
    columns normalised (STG-NF's graph)."""
    a = np.eye(joints)
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    reach = np.stack([np.linalg.matrix_power(a, d) > 0 for d in range(max_hop + 1)])
    adj = reach.any(axis=0).astype(np.float64)
    return torch.tensor(adj / adj.sum(axis=0, keepdims=True), dtype=torch.float32)


def stgnf_normalise(x: Tensor) -> Tensor:
    """``(N, 2, T, V)`` -> centred on the window's mean, divided by the window's y spread."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / x[:, 1:2].std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


class ActNorm(nn.Module):
    """Per-channel affine, initialised from the first training batch."""

    ready: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("ready", torch.tensor(False))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not bool(self.ready):
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                std = ((x + self.bias) ** 2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
                self.logs.copy_(torch.log(1.0 / (std + 1e-6)))
                self.ready.fill_(True)
        return (x + self.bias) * torch.exp(self.logs), self.logs.sum() * x.shape[2] * x.shape[3]


class STGCNUnit(nn.Module):
    """One spatial-temporal graph convolution unit (1x1 conv, graph product, temporal conv)."""

    def __init__(self, cin: int, cout: int, kt: int, residual: bool) -> None:
        super().__init__()
        self.gcn = nn.Conv2d(cin, cout, 1)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, (kt, 1), padding=((kt - 1) // 2, 0)),
            nn.BatchNorm2d(cout),
        )
        self.res = (
            nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout)) if residual else None
        )

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        h = torch.einsum("nctv,vw->nctw", self.gcn(x), adj)
        h = self.tcn(h)
        if self.res is not None:
            h = h + self.res(x)
        return torch.relu(h)


class GraphGlow(nn.Module):
    """Glow over ``(N, 2, T, V)`` poses with ST-GCN coupling subnets (STG-NF's flow).

    Arguments:
        joints: ``V``.
        edges: skeleton edges (hop distances define the graph).
        frames: ``T`` (the temporal kernel is ``T // 2 + 1``).
        steps: flow steps (ActNorm, channel reversal, affine coupling).
        max_hop: graph neighbourhood.
    """

    adj: Tensor

    def __init__(
        self,
        joints: int,
        edges: tuple[tuple[int, int], ...],
        frames: int,
        steps: int = 8,
        max_hop: int = 8,
    ) -> None:
        super().__init__()
        self.register_buffer("adj", hop_adjacency(edges, joints, max_hop))
        self.norms = nn.ModuleList(ActNorm(2) for _ in range(steps))
        self.nets = nn.ModuleList(
            STGCNUnit(1, 2, frames // 2 + 1, residual=k > 0) for k in range(steps)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Negative log-likelihood in bits per dimension, one per window."""
        return self.energy(x)[1] / math.log(2.0)

    def energy(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-entry prior energy ``0.5 (z - 3)^2`` ``(N, 2, T, V)`` and NLL per dimension
        ``(N,)`` in nats (prior energy + Gaussian constant - log-det, over the entries)."""
        z, logdet = self.transform(x)
        prior = 0.5 * (z - PRIOR_MEAN) ** 2
        nll = prior.mean(dim=(1, 2, 3)) + 0.5 * math.log(2 * math.pi) - logdet / z[0].numel()
        return prior, nll

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latent ``z`` (same shape as ``x``) and ``log |det dz/dx|`` per window."""
        logdet = torch.zeros(x.shape[0], device=x.device)
        z = x
        for norm, net in zip(self.norms, self.nets, strict=True):
            z, ld = norm(z)
            logdet = logdet + ld
            z = z.flip(1)  # reverse the channel order
            z1, z2 = z[:, :1], z[:, 1:]
            h = net(z1, self.adj)
            shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + 1e-6
            z2 = (z2 + shift) * scale
            logdet = logdet + torch.log(scale).sum(dim=(1, 2, 3))
            z = torch.cat([z1, z2], dim=1)
        return z, logdet


def _affines(bns: list[nn.Module]) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norms, one per flow, as per-channel ``scale, shift`` ``(F, C)``."""
    scales, shifts = [], []
    for bn in bns:
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.running_var is not None and bn.running_mean is not None
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        scales.append(scale)
        shifts.append(bn.bias - bn.running_mean * scale)
    return torch.stack(scales), torch.stack(shifts)


def _conv(m: nn.Module) -> tuple[Tensor, Tensor]:
    """A convolution's weight and bias."""
    assert isinstance(m, nn.Conv2d) and m.bias is not None
    return m.weight, m.bias


def _toeplitz(w: Tensor, frames: int, pad: int) -> Tensor:
    """A temporal convolution's weight ``(O, I, K, 1)`` (zero padding ``pad``) as the
    ``(O * T, I * T)`` matrix that applies it to ``(I * T)``-stacked frames."""
    o, i, k, _ = w.shape
    t = torch.arange(frames, device=w.device)
    lag = t[None, :] - t[:, None] + pad  # lag[t, s]: the kernel tap input frame s meets at t
    m = w[..., 0][:, :, lag.clamp(0, k - 1)] * ((lag >= 0) & (lag < k))  # (O, I, T, T)
    return m.permute(0, 2, 1, 3).reshape(o * frames, i * frames)


class StackedFlows:
    """The flows of a :class:`PostureModel` evaluated together, for inference.

    Every flow's step becomes batched matrix products over the flows: the 1x1 convolutions
    and eval-mode batch norms become per-channel affines, each temporal convolution a
    ``(2T, 2T)`` Toeplitz matrix (batch norm folded in). PyTorch's CPU convolution kernels
    are slow for 1-2 channels (91% of the flows' time went to them); this path computes
    the same NLLs up to float rounding (~3e-5 nats/dim), 2.9x faster for 8 flows (one
    thread, 256 windows; docs/DECISIONS.md, session 11). Built from the flows' weights at
    one moment for ``frames``-frame inputs: rebuild after they change.
    """

    def __init__(self, flows: list[GraphGlow], frames: int) -> None:
        self.flows, self.frames = len(flows), frames
        self.adj = flows[0].adj

        def stack(ts: list[Tensor]) -> Tensor:  # per flow (C,) -> (F, C)
            return torch.stack([t.reshape(-1) for t in ts])

        self.steps: list[tuple[Tensor, ...]] = []
        with torch.no_grad():
            for k in range(len(flows[0].nets)):
                norms = [cast(ActNorm, f.norms[k]) for f in flows]
                units = [cast(STGCNUnit, f.nets[k]) for f in flows]
                gw, gb = (stack(list(p)) for p in zip(*(_conv(u.gcn) for u in units), strict=True))
                s1, b1 = _affines([u.tcn[0] for u in units])
                s2, b2 = _affines([u.tcn[3] for u in units])
                tcn = [cast(nn.Conv2d, u.tcn[2]) for u in units]
                pad = int(tcn[0].padding[0])  # type: ignore[index]
                tm = torch.stack(
                    [_toeplitz(c.weight * s2[f][:, None, None, None], frames, pad) for f, c in enumerate(tcn)]
                )  # fmt: skip
                tb = stack([_conv(c)[1] for c in tcn]) * s2 + b2
                rw = rb = torch.zeros(0)
                res = [u.res for u in units if u.res is not None]
                if res:
                    s3, b3 = _affines([r[1] for r in res])
                    w, b = (stack(list(p)) for p in zip(*(_conv(r[0]) for r in res), strict=True))
                    rw, rb = w * s3, b * s3 + b3
                logs = stack([n.logs for n in norms])
                ab = stack([n.bias for n in norms])
                self.steps.append((ab, logs, logs.sum(1), gw, gb, s1, b1, tm, tb, rw, rb))

    def energy(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-flow NLL ``(F, N)`` (nats per dimension) and the flows' mean per-joint prior
        energy ``(N, V)`` of flow inputs ``x (N, 2, T, V)``
        (:meth:`PostureModel.flow_nll`)."""
        n, _, t, v = x.shape
        f = self.flows

        def ch(a: Tensor) -> Tensor:  # (F, C) -> broadcast over (F, C, T, N, V)
            return a[:, :, None, None, None]

        z = x.permute(1, 2, 0, 3)[None].expand(f, 2, t, n, v)
        logdet = torch.zeros(f, n, dtype=x.dtype, device=x.device)
        for ab, al, ald, gw, gb, s1, b1, tm, tb, rw, rb in self.steps:
            z = (z + ch(ab)) * torch.exp(ch(al))
            logdet = logdet + (ald * t * v)[:, None]
            z1, z2 = z[:, 1], z[:, 0]  # the channel reversal
            g = torch.matmul(z1[:, None] * ch(gw) + ch(gb), self.adj)
            g = torch.relu(g * ch(s1) + ch(b1))
            h = torch.bmm(tm, g.reshape(f, 2 * t, n * v)).view(f, 2, t, n, v) + ch(tb)
            if rw.numel():
                h = h + z1[:, None] * ch(rw) + ch(rb)
            h = torch.relu(h)
            scale = torch.sigmoid(h[:, 1] + 2.0) + 1e-6
            z2 = (z2 + h[:, 0]) * scale
            logdet = logdet + torch.log(scale).sum(dim=(1, 3))
            z = torch.stack([z1, z2], 1)
        prior = 0.5 * (z - PRIOR_MEAN) ** 2  # (F, 2, T, N, V)
        nll = prior.mean(dim=(1, 2, 4)) + 0.5 * math.log(2 * math.pi) - logdet / (2 * t * v)
        return nll, prior.mean(dim=(0, 1, 2))


def train_glow(
    model: GraphGlow,
    x: Tensor,
    epochs: int,
    lr: float = 5e-4,
    batch: int = 256,
    select: Callable[[GraphGlow], float] | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
) -> tuple[GraphGlow, list[float]]:
    """STG-NF's optimisation: Adamax, weight decay 5e-5, lr x 0.99 per epoch, gradient norm
    clipped at 100, batches of ``batch`` shuffled windows.

    Arguments:
        model: untrained flow (trained in place).
        x: ``(N, 2, T, V)`` normalised training windows.
        epochs: passes over ``x`` (shuffled with torch's global generator: seed it before
            building the model for a reproducible run).
        select: when given, called in eval mode after every epoch; the epoch with the
            lowest value is kept (else the last epoch).
        augment: when given, applied to every training batch (random draws from torch's
            global generator).

    Returns:
        The trained model in eval mode and the ``select`` value of every epoch.
    """
    retain_freed_memory()
    opt = torch.optim.Adamax(model.parameters(), lr=lr, weight_decay=5e-5)
    best, best_state, trace = math.inf, None, []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(batch):
            xb = x[idx] if augment is None else augment(x[idx])
            loss = model(xb).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100)
            opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * 0.99**epoch
        if select is not None:
            model.eval()
            value = select(model)
            trace.append(value)
            if value < best:
                best, best_state = value, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), trace


@dataclass(frozen=True)
class PostureConfig:
    """Posture model settings.

    Attributes:
        frames: window frames the flows see (the last ``frames`` of a scoring window).
        flows: flows trained from different seeds and averaged.
        steps: flow steps per flow.
        max_hop: graph neighbourhood of the couplings.
        epochs: training epochs per flow (the best on held-out normal windows is kept).
        weight: weight of the posture score in the fused score.
        stillness: the fused score also adds the stillness term
            (:mod:`forecasting.stillness`; checkpoints from before it existed load without).
        speed_conditioned: the fused score's motion part is standardised conditionally on
            the window's observed speed (:func:`forecasting.stillness.past_log_speed`): its
            normal mean is a line in that log speed, its spread the residuals' (see
            :meth:`PostureModel.fuse`); checkpoints from before it load without.
        upright: input canonicalisation, degrees: each window (training and scoring) is
            turned so that the body's mean axis over its frames (hip centre to shoulder
            centre) points up, by at most ``upright`` degrees (:func:`turn_upright`): a
            camera's roll is undone, a body lying down stays lying (0: none).
        upright_frames: the body axis is measured over the first ``upright_frames`` frames
            the flows see (0: all of them); 12, with the default windows (12 observed
            frames, 12 future ones), is the observed part: a body that tips over in the
            future is then not turned back toward upright by its own fall (measured the same
            on AIHub2, so not the default).
        yaw: training augmentation, degrees: every epoch each training window's horizontal
            coordinates are scaled by ``cos(theta)``, ``theta`` uniform in ``[0, yaw]``: a
            body turned about the vertical axis (side-on to the camera), in the flat-body
            approximation of a view the training camera never saw (:func:`yaw_squash`;
            0: none; flows saved before it load with 0). It changes training only, not how a
            window is scored.
    """

    frames: int = 24
    flows: int = POSTURE_FLOWS
    steps: int = 8
    max_hop: int = 8
    epochs: int = POSTURE_EPOCHS
    weight: float = POSTURE_WEIGHT
    stillness: bool = True
    speed_conditioned: bool = True
    upright: float = POSTURE_UPRIGHT
    upright_frames: int = POSTURE_UPRIGHT_FRAMES
    yaw: float = POSTURE_YAW

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("speed_conditioned", "upright", "upright_frames", "yaw"):
            if not d[k]:  # as before the option: older readers load the checkpoint
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostureConfig:
        # saved before the stillness term or upright inputs: as it was fitted; "roll" was a
        # training augmentation (session 12, removed): it does not change how flows score
        d = {k: v for k, v in d.items() if k != "roll"}
        if "upright" in d:  # upright flows of session 12 measured the axis on every frame
            d = {"upright_frames": 0, **d}
        return cls(
            **{"stillness": False, "speed_conditioned": False, "upright": 0.0, "yaw": 0.0, **d}
        )


class PostureModel(nn.Module):
    """Several :class:`GraphGlow` flows and the normal statistics that standardise them.

    Buffers (fitted by :func:`fit_normal_stats` on held-out normal windows): ``nll_mean`` /
    ``nll_std`` per flow, ``score_mean`` / ``score_std`` of the flows' mean standardised NLL
    (the posture score is that mean re-standardised: averaging correlated flows shrinks its
    spread, and the fused score weighs parts by their spread), ``joint_mean`` per joint (typical per-joint energy, so per-joint
    contributions read 1 = typical), ``motion_mean`` / ``motion_std`` of the motion scorer
    the fused score standardises, and (``cfg.stillness``) ``still_mean`` / ``still_std`` /
    ``still_hinge``: the stillness's normal statistics and the standardised value above
    which it counts (:data:`forecasting.stillness.HINGE_QUANTILE` of the normal windows);
    (``cfg.speed_conditioned``) ``motion_slope`` of the motion score's normal mean in the
    observed log speed, ``speed_mean`` (the normal windows' mean log speed, where the line
    takes ``motion_mean``) and ``speed_lo`` / ``speed_hi`` (their 1st and 99th percentiles:
    the line is not extrapolated beyond them); ``motion_std`` is then the residuals' spread.
    """

    nll_mean: Tensor
    nll_std: Tensor
    score_mean: Tensor
    score_std: Tensor
    joint_mean: Tensor
    motion_mean: Tensor
    motion_std: Tensor
    still_mean: Tensor
    still_std: Tensor
    still_hinge: Tensor
    motion_slope: Tensor
    speed_mean: Tensor
    speed_lo: Tensor
    speed_hi: Tensor

    def __init__(self, cfg: PostureConfig, joints: int = 17) -> None:
        super().__init__()
        self.cfg = cfg
        self._stacked: WeightsCache[StackedFlows] = WeightsCache()
        self.flows = nn.ModuleList(
            GraphGlow(joints, COCO_EDGES, cfg.frames, cfg.steps, cfg.max_hop)
            for _ in range(cfg.flows)
        )
        self.register_buffer("nll_mean", torch.zeros(cfg.flows))
        self.register_buffer("nll_std", torch.ones(cfg.flows))
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))
        self.register_buffer("joint_mean", torch.ones(joints))
        self.register_buffer("motion_mean", torch.zeros(()))
        self.register_buffer("motion_std", torch.ones(()))
        if cfg.stillness:
            self.register_buffer("still_mean", torch.zeros(()))
            self.register_buffer("still_std", torch.ones(()))
            self.register_buffer("still_hinge", torch.zeros(()))
        if cfg.speed_conditioned:
            self.register_buffer("motion_slope", torch.zeros(()))
            self.register_buffer("speed_mean", torch.zeros(()))
            self.register_buffer("speed_lo", torch.zeros(()))
            self.register_buffer("speed_hi", torch.zeros(()))

    def inputs(self, poses: Tensor) -> Tensor:
        """``(N, L, 17, 2)`` filled normalised windows -> ``(N, 2, frames, 17)`` flow input."""
        return flow_inputs(poses, self.cfg)

    def flow_nll(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-flow NLL ``(F, N)`` (nats per dimension) and the flows' mean per-joint
        energy ``(N, V)`` of flow inputs ``x``: in eval mode without autograd through
        :class:`StackedFlows` (rebuilt when a weight changed), else flow by flow."""
        if not self.training and not torch.is_grad_enabled():
            flows = [cast(GraphGlow, g) for g in self.flows]
            build = lambda: StackedFlows(flows, x.shape[2])  # noqa: E731
            return self._stacked.get(self.flows, build, x.shape[2]).energy(x)
        return self.flow_nll_one_by_one(x)

    def flow_nll_one_by_one(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`flow_nll` through each flow's own modules (training, and the reference
        the stacked path is tested and benchmarked against)."""
        nll, joints = [], []
        for flow in self.flows:
            assert isinstance(flow, GraphGlow)
            prior, n = flow.energy(x)
            nll.append(n)
            joints.append(prior.mean(dim=(1, 2)))
        return torch.stack(nll), torch.stack(joints).mean(0)

    def forward(self, poses: Tensor) -> tuple[Tensor, Tensor]:
        """Posture anomaly score ``(N,)`` (mean standardised NLL of the flows, standardised
        again) and per-joint contributions ``(N, 17)`` (1 = typical) of filled normalised
        windows."""
        nll, joints = self.flow_nll(self.inputs(poses))
        z = ((nll - self.nll_mean[:, None]) / self.nll_std[:, None]).mean(0)
        return (z - self.score_mean) / self.score_std, joints / self.joint_mean

    def still_excess(self, still: Tensor) -> Tensor:
        """``(N,)`` standardised stillness (:func:`forecasting.stillness.stillness`) above
        its hinge, 0 below (and for a model without the term)."""
        if not self.cfg.stillness:
            return torch.zeros_like(still)
        z = (still - self.still_mean) / self.still_std
        return (z - self.still_hinge).clamp_min(0)

    def motion_z(self, motion: Tensor, speed: Tensor | None = None) -> Tensor:
        """``(N,)`` the motion scores ``motion`` standardised by their normal statistics;
        with ``cfg.speed_conditioned``, against the normal mean at the windows' observed log
        speed ``speed`` (:func:`~forecasting.stillness.past_log_speed`), clamped to the
        normal windows' range; a window whose speed is unknown (NaN) gets the normal mean.

        Raises:
            ValueError: ``speed`` is missing for a speed-conditioned model.
        """
        if not self.cfg.speed_conditioned:
            return (motion - self.motion_mean) / self.motion_std
        if speed is None:
            raise ValueError("this posture model's fused score needs the windows' past speed")
        v = torch.where(torch.isnan(speed), self.speed_mean, speed)  # no host sync
        v = torch.minimum(torch.maximum(v, self.speed_lo), self.speed_hi)
        mean = self.motion_mean + self.motion_slope * (v - self.speed_mean)
        return (motion - mean) / self.motion_std

    def fuse(
        self,
        motion: Tensor,
        posture: Tensor,
        still: Tensor | None = None,
        speed: Tensor | None = None,
    ) -> Tensor:
        """``z_motion + weight * z_posture + stillness excess``, all ``(N,)``: ``motion`` the
        windows' motion scores (standardised here by their normal statistics,
        :meth:`motion_z`, at their observed log ``speed`` for a speed-conditioned model),
        ``posture`` from :meth:`forward`, ``still`` their
        :func:`~forecasting.stillness.stillness`.

        Raises:
            ValueError: ``still`` is missing for a model whose fused score has the term
                (``cfg.stillness``; a model saved before the term takes None), or ``speed``
                for a speed-conditioned one.
        """
        z = self.motion_z(motion, speed) + self.cfg.weight * posture
        if still is None:
            if self.cfg.stillness:
                raise ValueError("this posture model's fused score needs the windows' stillness")
            return z
        return z + self.still_excess(still)


def with_fused_terms(model: PostureModel, weight: float | None = None) -> PostureModel:
    """A copy of ``model`` (its flows and statistics) whose fused score has today's terms:
    the stillness term and the speed-conditioned motion part (their statistics still to
    fit: :func:`fit_normal_stats`), ``weight`` (None: the model's own) for the posture part."""
    cfg = replace(
        model.cfg,
        stillness=True,
        speed_conditioned=True,
        weight=model.cfg.weight if weight is None else weight,
    )
    out = PostureModel(cfg, joints=model.joint_mean.shape[0])
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    new = {"still_mean", "still_std", "still_hinge", "motion_slope", "speed_mean", "speed_lo", "speed_hi"}  # fmt: skip
    assert not unexpected and set(missing) <= new
    return out.eval()


def turn_upright(x: Tensor, max_degrees: float, frames: int = 0) -> Tensor:
    """Flow inputs ``(N, 2, T, V)`` (COCO-17, image axes: y down) each turned about the
    origin so that the window's mean body axis (hip centre to shoulder centre) over its
    first ``frames`` frames (0: all ``T``) points up, by at most ``max_degrees``."""
    part = x[:, :, :frames] if frames > 0 else x
    axis = (part[..., list(SHOULDERS)].mean(-1) - part[..., list(HIPS)].mean(-1)).mean(-1)
    lim = math.radians(max_degrees)
    a = -torch.atan2(axis[:, 0], -axis[:, 1]).clamp(-lim, lim)  # 0: upright
    c, s = torch.cos(a)[:, None, None], torch.sin(a)[:, None, None]
    u, v = x[:, 0], x[:, 1]
    return torch.stack([c * u - s * v, s * u + c * v], 1)


def yaw_squash(x: Tensor, max_degrees: float) -> Tensor:
    """Flow inputs ``(N, 2, T, V)`` (centred) with each window's horizontal coordinates scaled
    by ``cos(theta)``, ``theta ~ U(0, max_degrees)`` per window (torch's global generator):
    the body turned side-on by ``theta`` if it were flat."""
    theta = torch.rand(x.shape[0], device=x.device) * math.radians(max_degrees)
    scale = torch.stack([torch.cos(theta), torch.ones_like(theta)], 1)
    return x * scale.to(x.dtype)[:, :, None, None]


def flow_inputs(poses: Tensor, cfg: PostureConfig) -> Tensor:
    """Filled normalised windows ``(N, L, 17, 2)`` -> flow inputs ``(N, 2, cfg.frames, 17)``:
    the last frames, turned upright when ``cfg.upright``, :func:`stgnf_normalise`-d."""
    x = poses[:, -cfg.frames :].permute(0, 3, 1, 2)
    if cfg.upright > 0:
        x = turn_upright(stgnf_normalise(x), cfg.upright, cfg.upright_frames)
    return stgnf_normalise(x)


def windows_tensor(poses: np.ndarray, cfg: PostureConfig) -> Tensor:
    """:func:`flow_inputs` of windows held in numpy."""
    return flow_inputs(torch.as_tensor(poses, dtype=torch.float32), cfg)


def train_posture(
    train_poses: np.ndarray,
    val_poses: np.ndarray,
    cfg: PostureConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> PostureModel:
    """Train the flows of a posture model on normal windows.

    Arguments:
        train_poses: ``(N, L, 17, 2)`` filled normalised training windows (flip-augmented by
            the caller when wanted).
        val_poses: held-out normal windows: each flow keeps its epoch with the lowest NLL on
            them (the last epoch when empty).
        cfg: settings.
        seed: flow ``f`` trains from seed ``seed * cfg.flows + f``.
        log: called with one line per trained flow.
        deadline: ``time.monotonic()`` after which no further flow is started (at least one
            is trained); the model then holds the flows trained (``cfg.flows`` says how
            many).

    Returns:
        The model; call :func:`fit_normal_stats` before scoring with it.
    """
    if len(train_poses) == 0:
        raise ValueError("no training windows for the posture flows")
    x = windows_tensor(train_poses, cfg)
    xv = windows_tensor(val_poses, cfg) if len(val_poses) else None
    model = PostureModel(cfg, joints=train_poses.shape[2])

    def val_nll(m: GraphGlow) -> float:
        assert xv is not None
        with torch.no_grad():
            return float(torch.cat([m(b) for b in xv.split(4096)]).mean())

    for f in range(cfg.flows):
        if f > 0 and deadline is not None and time.monotonic() > deadline:
            if log is not None:
                log(f"posture flows: time is up after {f} of {cfg.flows}")
            kept = PostureModel(replace(cfg, flows=f), joints=train_poses.shape[2])
            kept.flows = nn.ModuleList(list(model.flows)[:f])
            return kept.eval()
        torch.manual_seed(seed * cfg.flows + f)
        flow = GraphGlow(train_poses.shape[2], COCO_EDGES, cfg.frames, cfg.steps, cfg.max_hop)
        select = val_nll if xv is not None else None
        augment = partial(yaw_squash, max_degrees=cfg.yaw) if cfg.yaw > 0 else None
        _, trace = train_glow(flow, x, cfg.epochs, select=select, augment=augment)
        model.flows[f] = flow
        if log is not None and trace:
            best = int(np.argmin(trace))
            log(f"posture flow {f}: best epoch {best + 1}, held-out NLL {trace[best]:.3f} bits/dim")
    return model.eval()


#: Fewest held-out normal windows of known speed the motion part's speed line is fitted on;
#: with fewer the pooled mean and spread are kept (a line through a handful of windows
#: leaves residuals of nearly 0: a spread that would turn any motion into an alarm).
MIN_SPEED_WINDOWS = 20


def _fit_speed_line(model: PostureModel, motion: Tensor, speed: Tensor) -> None:
    """``motion_mean + motion_slope * (v - speed_mean)``: the least-squares line of the
    normal windows' motion scores ``(N,)`` in their observed log speed ``v`` ``(N,)``
    (clamped to its 1st..99th percentile; windows of unknown speed take the mean, as
    :meth:`PostureModel.motion_z` gives them), ``motion_std`` the residuals' spread (two
    parameters fitted). Fewer than :data:`MIN_SPEED_WINDOWS` windows of known speed: slope
    0, the pooled spread ``motion_std`` already holds."""
    known = torch.isfinite(speed)
    if int(known.sum()) < MIN_SPEED_WINDOWS:
        model.motion_slope.zero_()
        model.speed_mean.zero_()
        model.speed_lo.zero_()
        model.speed_hi.zero_()
        return
    q = torch.tensor([0.01, 0.99], dtype=torch.float64)
    lo, hi = torch.quantile(speed[known].double(), q).float()
    mean = speed[known].clamp(lo, hi).mean()
    v = torch.where(known, speed, mean).clamp(lo, hi)
    dv = v - mean
    var = float((dv * dv).mean())
    slope = float((dv * (motion - motion.mean())).mean()) / var if var > 1e-12 else 0.0
    resid = motion - motion.mean() - slope * dv
    model.motion_slope.fill_(slope)
    model.speed_mean.copy_(mean)
    model.speed_lo.copy_(lo)
    model.speed_hi.copy_(hi)
    model.motion_std.copy_(resid.std(correction=2).clamp_min(1e-6))


@torch.no_grad()
def fit_normal_stats(
    model: PostureModel,
    poses: np.ndarray,
    motion: np.ndarray | None = None,
    seen: np.ndarray | None = None,
    n_obs: int | None = None,
) -> None:
    """Standardise the flows (and the motion score the fused score adds) on held-out
    normal windows ``poses (N, L, 17, 2)`` (filled) with motion scores ``motion (N,)``; with
    ``seen (N, L, 17)`` (keypoints really seen: ``visible & mask``) and ``n_obs`` observed
    frames, the stillness term's too, and (``cfg.speed_conditioned``) the motion score's
    normal mean as a least-squares line in the windows' observed log speed
    (:func:`~forecasting.stillness.past_log_speed`, clamped to its 1st..99th percentile),
    ``motion_std`` the residuals' standard deviation.

    Raises:
        ValueError: a model with the stillness term or speed-conditioned but no ``seen`` /
            ``n_obs``, or fewer than 2 windows.
    """
    if len(poses) < 2:
        raise ValueError(f"{len(poses)} held-out normal window(s): at least 2 are needed")
    x = windows_tensor(poses, model.cfg)
    parts = [model.flow_nll(b) for b in x.split(4096)]
    nll = torch.cat([p[0] for p in parts], 1)
    joints = torch.cat([p[1] for p in parts])
    model.nll_mean.copy_(nll.mean(1))
    model.nll_std.copy_(nll.std(1).clamp_min(1e-6))
    z = ((nll - model.nll_mean[:, None]) / model.nll_std[:, None]).mean(0)
    model.score_mean.copy_(z.mean())
    model.score_std.copy_(z.std().clamp_min(1e-6))
    model.joint_mean.copy_(joints.mean(0).clamp_min(1e-6))
    if (model.cfg.stillness or model.cfg.speed_conditioned) and (seen is None or n_obs is None):
        raise ValueError(
            "the stillness term and the speed-conditioned motion part need the windows' seen "
            "keypoints and n_obs"
        )
    if motion is not None and len(motion) > 1:
        m = torch.as_tensor(motion, dtype=torch.float32)
        model.motion_mean.copy_(m.mean())
        model.motion_std.copy_(m.std().clamp_min(1e-6))
        if model.cfg.speed_conditioned:
            assert seen is not None and n_obs is not None
            _fit_speed_line(model, m, past_log_speed(torch.as_tensor(poses), torch.as_tensor(seen), n_obs))  # fmt: skip
    if model.cfg.stillness:
        assert seen is not None and n_obs is not None
        s = stillness(torch.as_tensor(poses), torch.as_tensor(seen), n_obs)
        mean, std = s.mean(), s.std().clamp_min(1e-6)
        model.still_mean.copy_(mean)
        model.still_std.copy_(std)
        model.still_hinge.copy_(torch.quantile((s - mean) / std, HINGE_QUANTILE))
