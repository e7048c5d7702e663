"""Stochastic blocks for GRU-SNF: MCMC between the flow's layers at sampling time.

Reference: Wu, Köhler, Noé, "Stochastic Normalizing Flows" (NeurIPS 2020); the seed paper
(arXiv 2512.04282) puts random-walk Metropolis blocks between the couplings of a GRU-NF.
What differs from the seed paper's code (see ``../shared/docs/METHOD.md``): acceptance is
per sample (a valid MH kernel for the joint target), the point head is trained, the SNF
path log-weight is accumulated and returned, and the flow's own density is a target.

A block at position ``k`` (``0 = z``, ``L = x``, see :mod:`forecasting.flow`) runs MCMC on
the intermediate variable ``y_k`` with the interpolated target, ``lambda_k = k / L``
(or ``lambda_k = 1`` with ``interpolate=False``)::

    log rho_k(y) = (1 - lambda_k) log q_k(y) + lambda_k log pi_k(y)

``q_k`` is the flow's own distribution in space ``k`` (the base Gaussian pushed through
layers ``< k``) and ``pi_k`` the data-space target pulled back through layers ``>= k``:

- ``model``: ``pi = q_L``, then ``rho_k = q_k`` at every block: exact, the kernels leave the
  flow's distribution invariant;
- ``tempered``: ``pi = q_L ** beta`` (``beta < 1`` flattens, ``> 1`` sharpens);
- ``point``: ``pi = N(mu, sigma^2)``, the point head's Gaussian (trained with the model).

Path weight of each sample toward the model density (``log w = 0`` without MCMC, and for
the ``model`` target)::

    log w = log q_L(x) - log N(z) + sum(logdet of generative layers)
            + sum over MH moves (log rho_k(y_old) - log rho_k(y_new))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from forecasting.flow import LOG_2PI, ConditionalFlow, std_normal_logpdf

Kernel = Literal["none", "rwm", "mala"]
Target = Literal["model", "point", "tempered"]


@dataclass(frozen=True)
class SamplerConfig:
    """How futures are drawn.

    Attributes:
        name: label in tables.
        kernel: ``none`` (GRU-NF), ``rwm`` (random-walk Metropolis) or ``mala``.
        target: ``model``, ``point`` or ``tempered``.
        beta: exponent of the ``tempered`` target.
        steps: MCMC steps per block.
        step_size: proposal scale (RWM: std of the Gaussian step; MALA: Langevin epsilon).
        blocks: positions of blocks, ``0..L`` (``L`` = data space); None = after every layer.
        adapt: adapt the step size toward ``target_accept`` (per block, across steps and
            time; Robbins-Monro on log step size).
        target_accept: acceptance aimed at when adapting.
        interpolate: blocks target the interpolated energy ``lambda_k = k / L`` (the seed
            paper's schedule); False: every block targets the final target pulled back to its
            space (a block at 0 is then flow-preconditioned MCMC in the latent space, where
            the flow makes the target nearly Gaussian and a unit-scale step fits).
        mean_feedback: the seed authors' decoding: all K samples share one GRU path fed with
            the sample mean (samples then are not coherent trajectories).
        weights: compute the SNF path log-weights.
    """

    name: str = "gru-nf"
    kernel: Kernel = "none"
    target: Target = "model"
    beta: float = 0.5
    steps: int = 2
    step_size: float = 0.35
    blocks: tuple[int, ...] | None = None
    adapt: bool = False
    target_accept: float = 0.5
    interpolate: bool = True
    mean_feedback: bool = False
    weights: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = list(self.blocks) if self.blocks is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerConfig:
        d = dict(d)
        if d.get("blocks") is not None:
            d["blocks"] = tuple(d["blocks"])
        return cls(**d)

    def with_(self, **kw: Any) -> SamplerConfig:
        return replace(self, **kw)


GRU_NF = SamplerConfig()

#: The GRU-SNF default: two random-walk Metropolis steps in the latent space (block 0)
#: against the point head's Gaussian pulled back through the flow. Chosen on forecast
#: metrics of AIHub2 test normal windows: the best energy score of every variant, at about
#: 1.2x the cost of GRU-NF (docs/DECISIONS.md has the table).
SNF_DEFAULT = SamplerConfig(
    name="gru-snf",
    kernel="rwm",
    target="point",
    steps=2,
    step_size=0.5,
    blocks=(0,),
    interpolate=False,
)


class StepStats(NamedTuple):
    """Per-call MCMC statistics.

    Attributes:
        accepted: ``(n_blocks,)`` accepted proposals per block.
        proposed: ``(n_blocks,)`` proposals per block.
        step_sizes: ``(n_blocks,)`` step sizes after the call.
    """

    accepted: Tensor
    proposed: Tensor
    step_sizes: Tensor


class StochasticFlowSampler:
    """Runs the generative pass of a :class:`ConditionalFlow` with MCMC blocks in between.

    Arguments:
        flow: the flow.
        cfg: the sampler configuration.
        device: where the per-block step sizes live.
    """

    def __init__(
        self, flow: ConditionalFlow, cfg: SamplerConfig, device: torch.device | None = None
    ):
        self.flow = flow
        self.cfg = cfg
        L = flow.num_layers
        if cfg.kernel == "none":
            self.blocks: tuple[int, ...] = ()
        else:
            self.blocks = tuple(cfg.blocks) if cfg.blocks is not None else tuple(range(1, L + 1))
        for k in self.blocks:
            if not 0 <= k <= L:
                raise ValueError(f"block position {k} outside 0..{L}")
        self.step_sizes = torch.full((len(self.blocks),), cfg.step_size, device=device)
        self.accepted = torch.zeros(len(self.blocks), device=device)
        self.proposed = torch.zeros(len(self.blocks), device=device)

    # -- energies --------------------------------------------------------------------------
    def log_density(
        self, y: Tensor, k: int, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor | None]:
        """``log rho_k(y)`` (unnormalised) and, when known for free, ``log q_L`` of the sample's x.

        Arguments:
            y: ``(N, D)`` state in space ``k``.
            k: block position.
            ctx: flow context of the current step.
            point: ``(mu (N, D), log_sigma (D,))`` of the point head (``point`` target only).

        Returns:
            ``(log_rho (N,), log_qL (N,) or None)``.
        """
        L = self.flow.num_layers
        lam = k / L if self.cfg.interpolate else 1.0
        z, ld_down = self.flow.f(y, ctx, start=k)
        log_qk = std_normal_logpdf(z) + ld_down
        if self.cfg.target == "model":
            return log_qk, (log_qk if k == L else None)
        x, ld_up = self.flow.g(y, ctx, start=k)
        log_qL = log_qk - ld_up
        if self.cfg.target == "tempered":
            log_pi_x = self.cfg.beta * log_qL
        else:
            if point is None:
                raise ValueError("the 'point' target needs the point head's mean and scale")
            mu, log_sigma = point
            r = (x - mu) * torch.exp(-log_sigma)
            log_pi_x = -0.5 * (r * r).sum(-1) - log_sigma.sum() - 0.5 * x.shape[-1] * LOG_2PI
        log_pi_k = log_pi_x + ld_up
        return (1 - lam) * log_qk + lam * log_pi_k, log_qL

    def _grad(
        self, y: Tensor, k: int, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            lp, lq = self.log_density(yg, k, ctx, point)
            (grad,) = torch.autograd.grad(lp.sum(), yg)
        return lp.detach(), (lq.detach() if lq is not None else None), grad.detach()

    # -- one block ---------------------------------------------------------------------------
    def _block(
        self,
        b: int,
        k: int,
        y: Tensor,
        ctx: list[Tensor],
        point: tuple[Tensor, Tensor] | None,
        logw: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        cfg = self.cfg
        mala = cfg.kernel == "mala"
        if mala:
            lp, lq, grad = self._grad(y, k, ctx, point)
        else:
            lp, lq = self.log_density(y, k, ctx, point)
            grad = None
        for _ in range(cfg.steps):
            eps = self.step_sizes[b]
            noise = torch.randn_like(y)
            if mala:
                assert grad is not None
                prop = y + 0.5 * eps * eps * grad + eps * noise
                lp_p, lq_p, grad_p = self._grad(prop, k, ctx, point)
                back = y - prop - 0.5 * eps * eps * grad_p
                log_q_back = -0.5 * (back * back).sum(-1) / (eps * eps)
                log_q_fwd = -0.5 * (noise * noise).sum(-1)
                log_alpha = lp_p - lp + log_q_back - log_q_fwd
            else:
                prop = y + eps * noise
                lp_p, lq_p = self.log_density(prop, k, ctx, point)
                grad_p = None
                log_alpha = lp_p - lp
            accept = torch.log(torch.rand_like(lp)) < log_alpha
            a = accept.unsqueeze(-1)
            logw = logw + torch.where(accept, lp - lp_p, torch.zeros_like(lp))
            y = torch.where(a, prop, y)
            lp = torch.where(accept, lp_p, lp)
            if lq is not None and lq_p is not None:
                lq = torch.where(accept, lq_p, lq)
            if mala:
                assert grad is not None and grad_p is not None
                grad = torch.where(a, grad_p, grad)
            rate = accept.float().mean()
            self.accepted[b] += accept.float().sum()
            self.proposed[b] += accept.numel()
            if cfg.adapt:
                self.step_sizes[b] = eps * torch.exp(0.5 * (rate - cfg.target_accept))
        return y, logw, lq

    # -- the generative pass -------------------------------------------------------------------
    def sample(
        self, z: Tensor, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Push base samples ``z: (N, D)`` to data space through layers and blocks.

        Returns:
            ``(x (N, D), log_w (N,))``; ``log_w`` is zero when no block runs or when weights
            are off.
        """
        flow = self.flow
        L = flow.num_layers
        if not self.blocks:
            x, _ = flow.g(z, ctx)
            return x, torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        track = self.cfg.weights
        logw = -std_normal_logpdf(z) if track else torch.zeros(z.shape[0], device=z.device)
        y = z
        lq_final: Tensor | None = None
        pos = 0
        for b, k in sorted(enumerate(self.blocks), key=lambda t: t[1]):
            if k > pos:
                y, ld = flow.g(y, ctx, start=pos, stop=k)
                logw = logw + ld
                pos = k
            y, logw, lq = self._block(b, k, y, ctx, point, logw)
            lq_final = lq if k == L else None
        if pos < L:
            y, ld = flow.g(y, ctx, start=pos, stop=L)
            logw = logw + ld
        if not track:
            return y, torch.zeros_like(logw)
        if lq_final is None:
            lq_final = flow.log_prob(y, ctx)
        return y, logw + lq_final

    def stats(self) -> StepStats:
        return StepStats(self.accepted.clone(), self.proposed.clone(), self.step_sizes.clone())


def acceptance(stats: StepStats) -> list[float]:
    """Acceptance rate per block (NaN where nothing was proposed)."""
    return [
        (a / p) if p > 0 else math.nan
        for a, p in zip(stats.accepted.tolist(), stats.proposed.tolist(), strict=True)
    ]
