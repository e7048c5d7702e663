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
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from forecasting.defaults import SAMPLER_TEMPERATURE
from forecasting.flow import ConditionalFlow, diag_normal_logpdf, std_normal_logpdf

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
        temperature: scale of the flow's base noise (``z ~ N(0, temperature^2)``; 1 = the
            model's own distribution; below 1 draws sharper sets, as Glow's temperature).
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
    temperature: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(
                f"sampler {self.name!r}: temperature must be > 0, got {self.temperature}"
            )

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

    def tempered(self, t: float) -> SamplerConfig:
        """This sampler at temperature ``t``, named ``<name>-t<t>`` (a tempered sampler's own
        suffix replaced, not stacked), so a threshold calibrated at one temperature is never
        served at another.

        Raises:
            ValueError: ``t`` is not > 0.
        """
        if not t > 0:
            raise ValueError(f"sampler {self.name!r}: the temperature must be > 0, got {t}")
        plain = _TEMPERED_SUFFIX.sub("", self.name) if self.temperature != 1.0 else self.name
        return replace(self, name=f"{plain}-t{t:g}", temperature=t)


#: A tempered sampler's name suffix (``-t0.8``).
_TEMPERED_SUFFIX = re.compile(r"-t[0-9]*\.?[0-9]+$")


GRU_NF = SamplerConfig()

#: The GRU-SNF default: one adaptive random-walk Metropolis step in data space toward the
#: trained point head's Gaussian (per-sample acceptance). Its energy needs no flow pass, so it
#: costs little over GRU-NF; path weights (one more flow pass per step) only on request.
#: No variant beat GRU-NF on the paper's criterion on AIHub2 (docs/DECISIONS.md).
SNF_DEFAULT = SamplerConfig(
    name="gru-snf",
    kernel="rwm",
    target="point",
    steps=1,
    step_size=0.1,
    blocks=(-1,),
    interpolate=False,
    adapt=True,
    target_accept=0.4,
    weights=False,
)

#: The sampler a newly saved checkpoint carries (``Checkpoint.sampler``, what the name
#: ``default`` serves for it): :data:`SNF_DEFAULT` at
#: :data:`forecasting.defaults.SAMPLER_TEMPERATURE`, named as
#: :func:`forecasting.samplers.sampler_by_name` names a tempered sampler (``gru-snf-t0.8``),
#: so a threshold calibrated with it is never served with another temperature.
CHECKPOINT_SAMPLER = SNF_DEFAULT.tempered(SAMPLER_TEMPERATURE)


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


class Energy(NamedTuple):
    """One evaluation of a block's target at a state ``y_k``.

    Attributes:
        log_rho: ``(N,)`` unnormalised log-density of the block's target.
        log_q_data: ``(N,)`` model log-density of the state's data-space image (or None).
        x: ``(N, D)`` data-space image ``g_{>=k}(y)`` (or None when not computed).
        ld_up: ``(N,)`` log-determinant of ``g_{>=k}`` at ``y`` (or None).
    """

    log_rho: Tensor
    log_q_data: Tensor | None
    x: Tensor | None
    ld_up: Tensor | None


def _pick(cond: Tensor, new: Tensor | None, old: Tensor | None) -> Tensor | None:
    if new is None or old is None:
        return None
    return torch.where(cond, new, old)


class StochasticFlowSampler:
    """Runs the generative pass of a :class:`ConditionalFlow` with MCMC blocks in between.

    Arguments:
        flow: the flow.
        cfg: the sampler configuration.
        device: where the per-block step sizes live.
        generator: random stream of the MCMC proposals and acceptances (default: torch's
            global generator).
    """

    def __init__(
        self,
        flow: ConditionalFlow,
        cfg: SamplerConfig,
        device: torch.device | None = None,
        generator: torch.Generator | None = None,
    ):
        self.flow = flow
        self.cfg = cfg
        self.generator = generator
        L = flow.num_layers
        if cfg.kernel == "none":
            self.blocks: tuple[int, ...] = ()
        else:
            raw = tuple(cfg.blocks) if cfg.blocks is not None else tuple(range(1, L + 1))
            self.blocks = tuple(k if k >= 0 else L + 1 + k for k in raw)
        for k in self.blocks:
            if not 0 <= k <= L:
                raise ValueError(f"block position {k} outside 0..{L}")
        self.step_sizes = torch.full((len(self.blocks),), cfg.step_size, device=device)
        self.accepted = torch.zeros(len(self.blocks), device=device)
        self.proposed = torch.zeros(len(self.blocks), device=device)

    # -- energies --------------------------------------------------------------------------
    def log_density(
        self, y: Tensor, k: int, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None
    ) -> Energy:
        """``log rho_k(y)`` (unnormalised) and what the evaluation computed on the way.

        Arguments:
            y: ``(N, D)`` state in space ``k``.
            k: block position.
            ctx: flow context of the current step.
            point: ``(mu (N, D), log_sigma (D,))`` of the point head (``point`` target only).

        Returns:
            :class:`Energy`; ``x``, ``ld_up`` and ``log_q_data`` are None when not computed.
        """
        L = self.flow.num_layers
        lam = k / L if self.cfg.interpolate else 1.0
        if lam == 1.0 and self.cfg.target == "point":
            # Pure point target: no flow density needed (the path weight's model density
            # is evaluated once, for the final sample only).
            x, ld_up = (
                self.flow.g(y, ctx, start=k)
                if k < L
                else (y, torch.zeros(y.shape[0], device=y.device))
            )
            if point is None:
                raise ValueError("the 'point' target needs the point head's mean and scale")
            return Energy(diag_normal_logpdf(x, *point) + ld_up, None, x, ld_up)
        z, ld_down = self.flow.f(y, ctx, start=k)
        log_qk = std_normal_logpdf(z) + ld_down
        if self.cfg.target == "model":
            if k == L:
                return Energy(log_qk, log_qk, y, torch.zeros_like(log_qk))
            return Energy(log_qk, None, None, None)
        x, ld_up = self.flow.g(y, ctx, start=k)
        log_qL = log_qk - ld_up
        if self.cfg.target == "tempered":
            log_pi_x = self.cfg.beta * log_qL
        else:
            if point is None:
                raise ValueError("the 'point' target needs the point head's mean and scale")
            log_pi_x = diag_normal_logpdf(x, *point)
        log_pi_k = log_pi_x + ld_up
        return Energy((1 - lam) * log_qk + lam * log_pi_k, log_qL, x, ld_up)

    def _grad(
        self, y: Tensor, k: int, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None
    ) -> tuple[Energy, Tensor]:
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            e = self.log_density(yg, k, ctx, point)
            (grad,) = torch.autograd.grad(e.log_rho.sum(), yg)
        return Energy(*(t.detach() if t is not None else None for t in e)), grad.detach()  # type: ignore[arg-type]

    # -- one block ---------------------------------------------------------------------------
    def _block(
        self,
        b: int,
        k: int,
        y: Tensor,
        ctx: list[Tensor],
        point: tuple[Tensor, Tensor] | None,
        logw: Tensor,
    ) -> tuple[Tensor, Tensor, Energy]:
        """Run the MH steps of block ``b`` at position ``k``; returns ``(y, logw, energy of y)``."""
        cfg = self.cfg
        mala = cfg.kernel == "mala"
        grad: Tensor | None = None
        if mala:
            cur, grad = self._grad(y, k, ctx, point)
        else:
            cur = self.log_density(y, k, ctx, point)
        for _ in range(cfg.steps):
            eps = self.step_sizes[b]
            noise = torch.randn(y.shape, generator=self.generator, device=y.device, dtype=y.dtype)
            if mala:
                assert grad is not None
                prop = y + 0.5 * eps * eps * grad + eps * noise
                new, grad_p = self._grad(prop, k, ctx, point)
                back = y - prop - 0.5 * eps * eps * grad_p
                log_q_back = -0.5 * (back * back).sum(-1) / (eps * eps)
                log_q_fwd = -0.5 * (noise * noise).sum(-1)
                log_alpha = new.log_rho - cur.log_rho + log_q_back - log_q_fwd
            else:
                prop = y + eps * noise
                new = self.log_density(prop, k, ctx, point)
                grad_p = None
                log_alpha = new.log_rho - cur.log_rho
            u = torch.rand(
                log_alpha.shape,
                generator=self.generator,
                device=log_alpha.device,
                dtype=log_alpha.dtype,
            )
            accept = torch.log(u) < log_alpha
            a = accept.unsqueeze(-1)
            logw = logw + torch.where(accept, cur.log_rho - new.log_rho, torch.zeros_like(logw))
            y = torch.where(a, prop, y)
            cur = Energy(
                torch.where(accept, new.log_rho, cur.log_rho),
                _pick(accept, new.log_q_data, cur.log_q_data),
                _pick(a, new.x, cur.x),
                _pick(accept, new.ld_up, cur.ld_up),
            )
            if mala:
                assert grad is not None and grad_p is not None
                grad = torch.where(a, grad_p, grad)
            self.accepted[b] += accept.float().sum()
            self.proposed[b] += accept.numel()
            if cfg.adapt:
                rate = accept.float().mean()
                self.step_sizes[b] = eps * torch.exp(0.5 * (rate - cfg.target_accept))
        return y, logw, cur

    # -- the generative pass -------------------------------------------------------------------
    def sample(
        self, z: Tensor, ctx: list[Tensor], point: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Push base samples ``z: (N, D)`` to data space through layers and blocks.

        The data-space sample, its log-determinant and ``log q_L`` computed by the last
        block's energy are reused, so a block costs one flow pass per MH step plus one.

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
        T = self.cfg.temperature  # z ~ N(0, T^2): its log density starts the path weight
        logw = (
            -(std_normal_logpdf(z / T) - z.shape[-1] * math.log(T))
            if track
            else torch.zeros(z.shape[0], device=z.device)
        )
        y = z
        last: Energy | None = None
        pos = 0
        for b, k in sorted(enumerate(self.blocks), key=lambda t: t[1]):
            if k > pos:
                y, ld = flow.g(y, ctx, start=pos, stop=k)
                logw = logw + ld
                pos = k
            y, logw, last = self._block(b, k, y, ctx, point, logw)
        if pos < L:
            if last is not None and last.x is not None and last.ld_up is not None:
                y, ld = last.x, last.ld_up  # computed by the last energy evaluation
            else:
                y, ld = flow.g(y, ctx, start=pos, stop=L)
            logw = logw + ld
        if not track:
            return y, torch.zeros_like(logw)
        lq_final = last.log_q_data if last is not None else None
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
