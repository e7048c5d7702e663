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

The *fused* score (:func:`fuse`) adds that posture score to the motion score, both in units
of their spread on held-out normal windows: ``z_motion + weight * z_posture``.

Shapes: ``poses (N, L, 17, 2)`` as in :mod:`forecasting.scoring`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from forecasting.defaults import POSTURE_EPOCHS, POSTURE_FLOWS, POSTURE_WEIGHT

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


def train_glow(
    model: GraphGlow,
    x: Tensor,
    epochs: int,
    lr: float = 5e-4,
    batch: int = 256,
    select: Callable[[GraphGlow], float] | None = None,
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

    Returns:
        The trained model in eval mode and the ``select`` value of every epoch.
    """
    opt = torch.optim.Adamax(model.parameters(), lr=lr, weight_decay=5e-5)
    best, best_state, trace = math.inf, None, []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(batch):
            loss = model(x[idx]).mean()
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
    """

    frames: int = 24
    flows: int = POSTURE_FLOWS
    steps: int = 8
    max_hop: int = 8
    epochs: int = POSTURE_EPOCHS
    weight: float = POSTURE_WEIGHT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostureConfig:
        return cls(**d)


class PostureModel(nn.Module):
    """Several :class:`GraphGlow` flows and the normal statistics that standardise them.

    Buffers (fitted by :func:`fit_normal_stats` on held-out normal windows): ``nll_mean`` /
    ``nll_std`` per flow, ``score_mean`` / ``score_std`` of the flows' mean standardised NLL
    (the posture score is that mean re-standardised: averaging correlated flows shrinks its
    spread, and the fused score weighs parts by their spread), ``joint_mean`` per joint (typical per-joint energy, so per-joint
    contributions read 1 = typical), ``motion_mean`` / ``motion_std`` of the motion scorer
    the fused score standardises.
    """

    nll_mean: Tensor
    nll_std: Tensor
    score_mean: Tensor
    score_std: Tensor
    joint_mean: Tensor
    motion_mean: Tensor
    motion_std: Tensor

    def __init__(self, cfg: PostureConfig, joints: int = 17) -> None:
        super().__init__()
        self.cfg = cfg
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

    def inputs(self, poses: Tensor) -> Tensor:
        """``(N, L, 17, 2)`` filled normalised windows -> ``(N, 2, frames, 17)`` flow input."""
        return stgnf_normalise(poses[:, -self.cfg.frames :].permute(0, 3, 1, 2))

    def flow_nll(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-flow NLL ``(F, N)`` (nats per dimension) and the flows' mean per-joint
        energy ``(N, V)`` of flow inputs ``x``."""
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

    def fuse(self, motion: Tensor, posture: Tensor) -> Tensor:
        """``z_motion + weight * z_posture`` (motion standardised by its normal statistics)."""
        z = (motion - self.motion_mean) / self.motion_std
        return z + self.cfg.weight * posture


def windows_tensor(poses: np.ndarray, frames: int) -> Tensor:
    """Filled normalised windows ``(N, L, 17, 2)`` -> flow inputs ``(N, 2, frames, 17)``."""
    x = torch.as_tensor(poses[:, -frames:], dtype=torch.float32).permute(0, 3, 1, 2)
    return stgnf_normalise(x)


def train_posture(
    train_poses: np.ndarray,
    val_poses: np.ndarray,
    cfg: PostureConfig,
    seed: int,
    log: Callable[[str], None] | None = None,
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

    Returns:
        The model; call :func:`fit_normal_stats` before scoring with it.
    """
    if len(train_poses) == 0:
        raise ValueError("no training windows for the posture flows")
    x = windows_tensor(train_poses, cfg.frames)
    xv = windows_tensor(val_poses, cfg.frames) if len(val_poses) else None
    model = PostureModel(cfg, joints=train_poses.shape[2])

    def val_nll(m: GraphGlow) -> float:
        assert xv is not None
        with torch.no_grad():
            return float(torch.cat([m(b) for b in xv.split(4096)]).mean())

    for f in range(cfg.flows):
        torch.manual_seed(seed * cfg.flows + f)
        flow = GraphGlow(train_poses.shape[2], COCO_EDGES, cfg.frames, cfg.steps, cfg.max_hop)
        _, trace = train_glow(flow, x, cfg.epochs, select=val_nll if xv is not None else None)
        model.flows[f] = flow
        if log is not None and trace:
            best = int(np.argmin(trace))
            log(f"posture flow {f}: best epoch {best + 1}, held-out NLL {trace[best]:.3f} bits/dim")
    return model.eval()


@torch.no_grad()
def fit_normal_stats(
    model: PostureModel, poses: np.ndarray, motion: np.ndarray | None = None
) -> None:
    """Standardise the flows (and the motion score the fused score adds) on held-out
    normal windows ``poses (N, L, 17, 2)`` (filled) with motion scores ``motion (N,)``."""
    x = windows_tensor(poses, model.cfg.frames)
    parts = [model.flow_nll(b) for b in x.split(4096)]
    nll = torch.cat([p[0] for p in parts], 1)
    joints = torch.cat([p[1] for p in parts])
    model.nll_mean.copy_(nll.mean(1))
    model.nll_std.copy_(nll.std(1).clamp_min(1e-6))
    z = ((nll - model.nll_mean[:, None]) / model.nll_std[:, None]).mean(0)
    model.score_mean.copy_(z.mean())
    model.score_std.copy_(z.std().clamp_min(1e-6))
    model.joint_mean.copy_(joints.mean(0).clamp_min(1e-6))
    if motion is not None and len(motion) > 1:
        m = torch.as_tensor(motion, dtype=torch.float32)
        model.motion_mean.copy_(m.mean())
        model.motion_std.copy_(m.std().clamp_min(1e-6))
