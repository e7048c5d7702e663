"""A conditional normalizing flow with per-layer access, for GRU-NF and GRU-SNF.

Reference: Dinh et al., "Density estimation using Real NVP" (ICLR 2017) for the affine
couplings; the per-layer interface exists for the stochastic blocks of Wu et al.,
"Stochastic Normalizing Flows" (NeurIPS 2020).

Layers are indexed in the *generative* direction: ``y_0 = z`` (base Gaussian) and
``y_{k+1} = layer_k.g(y_k)``, ``y_L = x`` (data). Each layer also has the normalizing
direction ``f = g^{-1}``. Both return the log-determinant of their own Jacobian.

The context (GRU state, ``(N, C)``) is embedded once per step by :meth:`ConditionalFlow.context`;
each layer keeps its projection of the embedding, so MCMC steps that evaluate the flow many
times at the same context pay the projection once.

Why hand-written and not zuko: the stochastic blocks need (a) the log-density of every
intermediate space, (b) the context projection hoisted out of repeated evaluations at one
time step, and (c) in-place-free small kernels for a 5k-row CPU batch; zuko's
``MaskedAutoregressiveTransform`` recomputes the hyper-network per call and its coupling
variant offers no hook for (b). See docs/DECISIONS.md for the measurement.

Example:
    >>> import torch
    >>> flow = ConditionalFlow(dim=4, context_dim=3, hidden=16, layers=4, masks=default_masks(4, 4))
    >>> ctx = flow.context(torch.randn(5, 3))
    >>> x = torch.randn(5, 4)
    >>> z, ld = flow.f(x, ctx)
    >>> x2, ld2 = flow.g(z, ctx)
    >>> bool(torch.allclose(x, x2, atol=1e-5)), bool(torch.allclose(ld, -ld2, atol=1e-5))
    (True, True)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def std_normal_logpdf(z: Tensor) -> Tensor:
    """``(N, D) -> (N,)`` log-density of the standard Gaussian."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI


def diag_normal_logpdf(x: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """``(N, D) -> (N,)`` log-density of a diagonal Gaussian ``N(mu, exp(log_sigma)^2)``."""
    r = (x - mu) * torch.exp(-log_sigma)
    return -0.5 * (r * r).sum(-1) - log_sigma.sum(-1) - 0.5 * x.shape[-1] * LOG_2PI


def default_masks(dim: int, layers: int, groups: list[Tensor] | None = None) -> list[Tensor]:
    """Binary masks (True = conditioning half) cycling through the given partitions.

    Arguments:
        dim: data dimension.
        layers: number of coupling layers.
        groups: bool masks of length ``dim``; each is used, then its complement. Default:
            alternating dimensions.
    """
    if groups is None:
        groups = [torch.arange(dim) % 2 == 0]
    out = []
    for k in range(layers):
        m = groups[(k // 2) % len(groups)]
        out.append(m if k % 2 == 0 else ~m)
    return out


def pose_masks(num_keypoints: int = 17) -> list[Tensor]:
    """Partitions of a ``(17 * 2)`` pose vector: x vs y, upper vs lower body, even vs odd joints."""
    j = torch.arange(num_keypoints * 2) // 2
    c = torch.arange(num_keypoints * 2) % 2
    return [c == 0, j < 11, j % 2 == 0]


class ConditionalAffineCoupling(nn.Module):
    """``x_b = y_b * exp(s(y_a, c)) + t(y_a, c)`` (generative), identity on the ``a`` half.

    Arguments:
        mask: ``(D,)`` bool, True for the conditioning half ``a``.
        embed_dim: size of the shared context embedding.
        hidden: width of the two hidden layers.
        max_log_scale: log-scales are soft-clamped to ``(-max, max)`` by ``tanh``.
    """

    idx_a: Tensor
    idx_b: Tensor
    perm_inv: Tensor

    def __init__(self, mask: Tensor, embed_dim: int, hidden: int, max_log_scale: float = 3.0):
        super().__init__()
        self.register_buffer("idx_a", torch.nonzero(mask).flatten())
        self.register_buffer("idx_b", torch.nonzero(~mask).flatten())
        self.register_buffer("perm_inv", torch.argsort(torch.cat([self.idx_a, self.idx_b])))
        da, db = int(mask.sum()), int((~mask).sum())
        self.inp = nn.Linear(da, hidden)
        self.ctx = nn.Linear(embed_dim, hidden, bias=False)
        self.hid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2 * db)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.max_log_scale = max_log_scale

    def project(self, embed: Tensor) -> Tensor:
        """``(N, E) -> (N, hidden)``: this layer's share of the context, computed once per step."""
        return self.ctx(embed)

    def _params(self, ya: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.nn.functional.silu(self.inp(ya) + c)
        h = torch.nn.functional.silu(self.hid(h))
        s, t = self.out(h).chunk(2, dim=-1)
        s = self.max_log_scale * torch.tanh(s / self.max_log_scale)
        return s, t

    def g(self, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Generative direction. ``y: (N, D), c: (N, hidden) -> (x (N, D), logdet (N,))``."""
        ya, yb = y[:, self.idx_a], y[:, self.idx_b]
        s, t = self._params(ya, c)
        xb = yb * torch.exp(s) + t
        return torch.cat([ya, xb], dim=-1)[:, self.perm_inv], s.sum(-1)

    def f(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Normalizing direction. ``x: (N, D) -> (y (N, D), logdet (N,))``."""
        xa, xb = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._params(xa, c)
        yb = (xb - t) * torch.exp(-s)
        return torch.cat([xa, yb], dim=-1)[:, self.perm_inv], -s.sum(-1)


class ConditionalAffine(nn.Module):
    """Elementwise ``x = y * exp(s(c)) + m(c)``: a conditional Gaussian when it stands alone."""

    def __init__(self, dim: int, embed_dim: int, max_log_scale: float = 5.0):
        super().__init__()
        self.lin = nn.Linear(embed_dim, 2 * dim)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)
        self.max_log_scale = max_log_scale

    def project(self, embed: Tensor) -> Tensor:
        """``(N, E) -> (N, 2D)`` log-scale and shift."""
        return self.lin(embed)

    def _split(self, c: Tensor) -> tuple[Tensor, Tensor]:
        s, m = c.chunk(2, dim=-1)
        return self.max_log_scale * torch.tanh(s / self.max_log_scale), m

    def g(self, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        s, m = self._split(c)
        return y * torch.exp(s) + m, s.sum(-1)

    def f(self, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        s, m = self._split(c)
        return (x - m) * torch.exp(-s), -s.sum(-1)


class ConditionalFlow(nn.Module):
    """A stack of conditional affine couplings followed by a conditional elementwise affine.

    Arguments:
        dim: data dimension ``D``.
        context_dim: size of the conditioning vector ``C`` (the GRU state).
        hidden: coupling width.
        layers: number of coupling layers (the final affine adds one more layer).
        masks: one conditioning mask per coupling layer (see :func:`pose_masks`).
        embed_dim: size of the shared context embedding.
        max_log_scale: bound of each coupling's log-scale.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: int = 128,
        layers: int = 6,
        masks: list[Tensor] | None = None,
        embed_dim: int = 64,
        max_log_scale: float = 3.0,
    ):
        super().__init__()
        masks = masks if masks is not None else default_masks(dim, layers)
        if len(masks) != layers:
            raise ValueError(f"need {layers} masks, got {len(masks)}")
        self.dim = dim
        self.embed = nn.Sequential(nn.Linear(context_dim, embed_dim), nn.SiLU())
        blocks: list[nn.Module] = [
            ConditionalAffineCoupling(m, embed_dim, hidden, max_log_scale) for m in masks
        ]
        blocks.append(ConditionalAffine(dim, embed_dim))
        self.layers = nn.ModuleList(blocks)

    @property
    def num_layers(self) -> int:
        """``L``: layers in the generative path (couplings + final affine)."""
        return len(self.layers)

    def context(self, h: Tensor) -> list[Tensor]:
        """``h: (N, C) -> [per-layer context]``; pass the list to every other method."""
        e = self.embed(h)
        return [layer.project(e) for layer in self.layers]  # type: ignore[operator]

    def g(
        self, z: Tensor, ctx: list[Tensor], start: int = 0, stop: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Generative pass ``y_start -> y_stop`` (default ``z -> x``); returns ``(y, logdet)``."""
        stop = self.num_layers if stop is None else stop
        logdet = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        y = z
        for k in range(start, stop):
            y, ld = self.layers[k].g(y, ctx[k])  # type: ignore[operator]
            logdet = logdet + ld
        return y, logdet

    def f(
        self, x: Tensor, ctx: list[Tensor], start: int | None = None, stop: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Normalizing pass ``y_start -> y_stop`` (default ``x -> z``); returns ``(y, logdet)``."""
        start = self.num_layers if start is None else start
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        y = x
        for k in range(start - 1, stop - 1, -1):
            y, ld = self.layers[k].f(y, ctx[k])  # type: ignore[operator]
            logdet = logdet + ld
        return y, logdet

    def log_prob(self, x: Tensor, ctx: list[Tensor]) -> Tensor:
        """``(N, D) -> (N,)`` exact conditional log-density of data-space ``x``."""
        z, ld = self.f(x, ctx)
        return std_normal_logpdf(z) + ld

    def log_prob_at(self, y: Tensor, ctx: list[Tensor], k: int) -> Tensor:
        """``(N,)`` log-density of the flow's own distribution in intermediate space ``y_k``."""
        z, ld = self.f(y, ctx, start=k)
        return std_normal_logpdf(z) + ld
