"""Every member of a forecaster in one batched call: stacked weights, batched matmuls.

:meth:`forecasting.torch_model.Ensemble.sample` rolls out its members one after another,
each through ``nn.GRU`` and the flow's layers: for the default 7 members, 12 horizon frames
and 8 flow layers that is thousands of small kernels per call, which dominate a live call
of a few persons. :class:`StackedForecaster` holds the members' weights stacked along a
leading member axis ``M`` and evaluates the GRU cell, the flow's generative pass and the
GRU-SNF default's Metropolis step for all members at once (``torch.baddbmm``).

Same draws, same futures: the random numbers are drawn from each group's generator in
exactly the order the member-by-member path draws them (member by member; per horizon frame
the base sample ``z``, then the Metropolis proposal noise and its uniform), and the adaptive
step size is kept per (member, group), so a window's futures equal those of
:meth:`Ensemble.sample` called on its group alone with that group's generator (up to float
rounding of batched matmuls, ~1e-6). A *group* is a run of consecutive windows sharing one
seed: the frame-seeded live path (one seed per camera frame) scores many frames in one call
and still gets each frame's own draws.

Supported samplers (:meth:`StackedForecaster.supports`): GRU-NF and random-walk Metropolis
toward the point head in data space without path weights (the GRU-SNF default). Others go
through the member-by-member path.

Shapes: ``past (B, 1 + t_obs, 17, 2)``, futures ``(B, K, H, 17, 2)``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from forecasting.flow import ConditionalAffine, ConditionalAffineCoupling
from forecasting.snf import SamplerConfig
from forecasting.torch_model import GRUNF, Ensemble, Forecaster
from forecasting.weights_cache import WeightsCache

J = 17
D = 2 * J


def _stack(ts: Sequence[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in ts]).contiguous()


def _lin(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x (M, N, in) @ w (M, in, out) + b (M, 1, out)``."""
    return torch.bmm(x, w) if b is None else torch.baddbmm(b, x, w)


def _stack_coupling(cs: Sequence[nn.Module]) -> tuple[Tensor, ...]:
    """One coupling layer of every member: ``w_inp^T, b_inp, w_hid^T, b_hid, w_out^T, b_out``."""
    out: list[Tensor] = []
    for name in ("inp", "hid", "out"):
        lins = [getattr(c, name) for c in cs]
        out += [_stack([x.weight.T for x in lins]), _stack([x.bias for x in lins])[:, None]]
    return tuple(out)


def member_ks(num_samples: int, members: int) -> list[int]:
    """Futures per member: ``K // M``, one more for the first ``K % M`` (as
    :meth:`Ensemble.sample`).

    >>> member_ks(42, 7), member_ks(20, 7)
    ([6, 6, 6, 6, 6, 6, 6], [3, 3, 3, 3, 3, 3, 2])
    """
    return [num_samples // members + (i < num_samples % members) for i in range(members)]


def _stack_gru(members: Sequence[GRUNF]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per GRU layer, the members' ``w_ih^T`` ``(M, in, 3H)``, ``w_hh^T`` ``(M, H, 3H)``,
    ``b_ih`` and ``b_hh`` ``(M, 1, 3H)``."""
    gru = []
    for layer in range(members[0].gru.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            _stack([getattr(m.gru, f"{n}_l{layer}") for m in members])
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        gru.append(
            (
                w_ih.transpose(1, 2).contiguous(),
                w_hh.transpose(1, 2).contiguous(),
                b_ih[:, None],
                b_hh[:, None],
            )
        )
    return gru


def _flow_layers(
    members: Sequence[GRUNF],
) -> tuple[list[list[ConditionalAffineCoupling]], list[ConditionalAffine]]:
    """Each member's couplings and final affine.

    Raises:
        TypeError: a flow is not affine couplings followed by one conditional affine, or
            the members' coupling masks differ.
    """
    layers = [list(m.flow.layers) for m in members]
    if not all(
        isinstance(ly[-1], ConditionalAffine)
        and all(isinstance(c, ConditionalAffineCoupling) for c in ly[:-1])
        for ly in layers
    ):
        raise TypeError("a flow must be affine couplings followed by one conditional affine")
    couplings = [cast(list[ConditionalAffineCoupling], ly[:-1]) for ly in layers]
    for cs in couplings[1:]:
        for c, c0 in zip(cs, couplings[0], strict=True):
            if not torch.equal(c.idx_a, c0.idx_a):
                raise TypeError("ensemble members' coupling masks differ")
    return couplings, [cast(ConditionalAffine, ly[-1]) for ly in layers]


@dataclass
class _Weights:
    """Stacked weights of some members (leading axis ``M``); see :class:`StackedForecaster`."""

    pose_mean: Tensor
    pose_std: Tensor
    disp_mean: Tensor
    disp_std: Tensor
    gru: list[tuple[Tensor, Tensor, Tensor, Tensor]]  # per layer: w_ih^T, w_hh^T, b_ih, b_hh
    state_w: Tensor  # embedding and point head, one matmul
    state_b: Tensor
    head_w: Tensor  # state_w and the last GRU layer's hidden weights: one matmul per step
    head_b: Tensor
    point_log_scale: Tensor
    ctx_w: Tensor  # every layer's context projection, one matmul
    ctx_b: Tensor
    couplings: list[tuple[Tensor, ...]]  # per coupling: w_inp^T, b_inp, w_hid^T, b_hid, ...

    def select(self, sel: Tensor) -> _Weights:
        def pick(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x[sel].contiguous()
            return type(x)(pick(v) for v in x)

        return _Weights(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})


class StackedForecaster:
    """A forecaster's members with stacked weights (inference only; weights are copied).

    Arguments:
        model: a :class:`GRUNF` (one member) or an :class:`Ensemble` (members share the
            architecture). Multi-layer GRUs are supported; the flow must be couplings
            followed by one conditional affine (:class:`~forecasting.flow.ConditionalFlow`).
    """

    def __init__(self, model: Forecaster):
        # No reference to the model is kept (it is the key of a weak cache, stacked_of).
        members: list[GRUNF] = model.member_list() if isinstance(model, Ensemble) else [model]
        self.M = len(members)
        first = members[0]
        self.cfg = first.cfg
        self.num_layers = first.flow.num_layers
        self.device = next(first.parameters()).device

        def buf(name: str) -> Tensor:
            return _stack([getattr(m, name) for m in members])[:, None, :]  # (M, 1, D)

        emb = [cast(nn.Linear, m.flow.embed[0]) for m in members]
        self.E = int(emb[0].out_features)
        couplings, finals = _flow_layers(members)
        ctx_parts = [
            [c.ctx.weight for c in cs] + [f.lin.weight]
            for cs, f in zip(couplings, finals, strict=True)
        ]
        self.ctx_sizes = [int(p.shape[0]) for p in ctx_parts[0]]
        self.final_max = float(finals[0].max_log_scale)
        c0s = couplings[0]
        # Each coupling works on its state laid out as [a half | b half]; one gather per
        # layer takes its output to the next layer's layout (the last one's: natural order).
        layouts = [torch.cat([c.idx_a, c.idx_b]) for c in c0s]
        self.first_layout = layouts[0]
        self.masks = [
            (
                int(c.idx_a.numel()),
                c.perm_inv[layouts[k + 1]] if k + 1 < len(c0s) else c.perm_inv,
                float(c.max_log_scale),
            )
            for k, c in enumerate(c0s)
        ]
        self.w = _Weights(
            pose_mean=buf("pose_mean"),
            pose_std=buf("pose_std"),
            disp_mean=buf("disp_mean"),
            disp_std=buf("disp_std"),
            gru=_stack_gru(members),
            state_w=_stack(
                [torch.cat([e.weight, m.point.weight]).T for e, m in zip(emb, members, strict=True)]
            ),
            state_b=_stack(
                [torch.cat([e.bias, m.point.bias]) for e, m in zip(emb, members, strict=True)]
            )[:, None],
            head_w=torch.empty(0),
            head_b=torch.empty(0),
            point_log_scale=buf("point_log_scale"),
            ctx_w=_stack([torch.cat(parts).T for parts in ctx_parts]),
            ctx_b=_stack(
                [
                    # the couplings' input biases ride on their context projections
                    torch.cat([*(c.inp.bias.detach().cpu() for c in cs), f.lin.bias.detach().cpu()])
                    for cs, f in zip(couplings, finals, strict=True)
                ]
            )[:, None].to(self.device),
            couplings=[_stack_coupling([cs[k] for cs in couplings]) for k in range(len(c0s))],
        )
        w_hh, b_hh = self.w.gru[-1][1], self.w.gru[-1][3]
        self.w.head_w = torch.cat([self.w.state_w, w_hh], -1).contiguous()
        self.w.head_b = torch.cat([self.w.state_b, b_hh], -1).contiguous()
        self._subsets: dict[tuple[int, ...], _Weights] = {tuple(range(self.M)): self.w}

    def weights(self, members: Sequence[int]) -> _Weights:
        """The stacked weights of ``members`` (cached)."""
        key = tuple(members)
        if key not in self._subsets:
            self._subsets[key] = self.w.select(torch.as_tensor(key, device=self.device))
        return self._subsets[key]

    # -- which samplers ---------------------------------------------------------------------
    def supports(self, sampler: SamplerConfig) -> bool:
        """GRU-NF, or one random-walk Metropolis block toward the point head in data space
        without path weights (the GRU-SNF default)."""
        if sampler.mean_feedback:
            return False
        if sampler.kernel == "none":
            return True
        if sampler.kernel != "rwm" or sampler.target != "point" or sampler.weights:
            return False
        L = self.num_layers
        blocks = tuple(sampler.blocks) if sampler.blocks is not None else tuple(range(1, L + 1))
        return tuple(k if k >= 0 else L + 1 + k for k in blocks) == (L,)

    # -- pieces -------------------------------------------------------------------------------
    @staticmethod
    def _gru_cell(
        w: _Weights, layer: int, gi: Tensor, h: Tensor, gh: Tensor | None = None
    ) -> Tensor:
        """One GRU step (``nn.GRU``'s equations); ``gi (M, N, 3C)`` the input projection,
        ``gh`` the hidden one when already computed."""
        _, w_hh, _, b_hh = w.gru[layer]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = (_lin(h, w_hh, b_hh) if gh is None else gh).chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n)

    def _gru_step(self, w: _Weights, x: Tensor, hs: list[Tensor], gh_last: Tensor) -> list[Tensor]:
        out = []
        for layer, h in enumerate(hs):
            w_ih, _, b_ih, _ = w.gru[layer]
            gh = gh_last if layer == len(hs) - 1 else None
            x = self._gru_cell(w, layer, _lin(x, w_ih, b_ih), h, gh)
            out.append(x)
        return out

    def _features(self, w: _Weights, poses: Tensor, mask: Tensor) -> Tensor:
        """:meth:`GRUNF.features` of every member in ``w``: ``(M, B, T-1, 85)``."""
        clip = self.cfg.clip
        B, T = poses.shape[:2]
        P = poses.reshape(1, B, T, D)
        m = mask.float().reshape(1, B, T, J)
        m2 = m.repeat_interleave(2, dim=-1)
        fp = (P - w.pose_mean[:, :, None]) / w.pose_std[:, :, None] * m2
        both = m2[:, :, 1:] * m2[:, :, :-1]
        fd = (
            ((P[:, :, 1:] - P[:, :, :-1]) - w.disp_mean[:, :, None]) / w.disp_std[:, :, None] * both
        )
        fp = torch.nan_to_num(fp).clamp(-clip, clip)
        fd = torch.nan_to_num(fd).clamp(-clip, clip)
        Ms = fp.shape[0]
        return torch.cat([fp[:, :, 1:], fd, m[:, :, 1:].expand(Ms, -1, -1, -1)], dim=-1)

    def encode(self, w: _Weights, past: Tensor, past_mask: Tensor) -> list[Tensor]:
        """GRU states ``[(M, B, C)] * layers`` after the observed frames."""
        x = self._features(w, past, past_mask)
        Ms, B, T, _ = x.shape
        hs = []
        for layer in range(len(w.gru)):
            w_ih, _, b_ih, _ = w.gru[layer]
            gi = _lin(x.reshape(Ms, B * T, -1), w_ih, b_ih).reshape(Ms, B, T, -1)
            h = torch.zeros(Ms, B, self.cfg.hidden, device=past.device)
            outs = []
            for t in range(T):
                h = self._gru_cell(w, layer, gi[:, :, t], h)
                outs.append(h)
            x = torch.stack(outs, 2)
            hs.append(h)
        return hs

    def _flow_g(self, w: _Weights, z: Tensor, ctx: list[Tensor]) -> Tensor:
        """The flow's generative pass ``z (M, N, D) -> x`` (each coupling's input bias is in
        its context ``ctx``)."""
        y = z[..., self.first_layout]
        for (da, to_next, mls), (wi, _, wh, bh, wo, bo), c in zip(
            self.masks, w.couplings, ctx, strict=False
        ):
            ya, yb = y[..., :da], y[..., da:]
            h = torch.nn.functional.silu(torch.baddbmm(c, ya, wi))
            h = torch.nn.functional.silu(_lin(h, wh, bh))
            s, t = _lin(h, wo, bo).chunk(2, dim=-1)
            s = mls * torch.tanh(s / mls)
            y = torch.cat([ya, yb * torch.exp(s) + t], dim=-1)[..., to_next]
        s, m = ctx[-1].chunk(2, dim=-1)
        s = self.final_max * torch.tanh(s / self.final_max)
        return y * torch.exp(s) + m

    # -- sampling -------------------------------------------------------------------------------
    def sample(
        self,
        past: Tensor,
        past_mask: Tensor,
        num_samples: int,
        sampler: SamplerConfig,
        generators: Sequence[torch.Generator],
        groups: Tensor,
        members: Sequence[int] | None = None,
        rows: Tensor | None = None,
        step_sizes: Tensor | None = None,
        skip: Sequence[bool] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw the futures of the selected members for every window.

        Arguments:
            past: ``(B, 1 + t_obs, 17, 2)`` observed frames of every window of the call.
            past_mask: ``(B, 1 + t_obs, 17)``.
            num_samples: K of the whole forecaster (split as :func:`member_ks`).
            sampler: a sampler :meth:`supports` accepts.
            generators: one per group, in group order; each is advanced exactly as the
                member-by-member path advances it for the selected members (draw members
                in ascending order across calls to reproduce that path).
            groups: ``(B,)`` int64 group of each window (non-decreasing: a group's windows
                are consecutive).
            members: member indices to draw from (default all), ascending.
            rows: ``(B',)`` windows to roll out (default all); random numbers are still
                drawn for every window of a group, so the selected ones get their own
                draws whatever else is in the call (the adaptive step size, a mean over
                the rows rolled out, is the one thing that depends on the selection).
            step_sizes: ``(M, G)`` Metropolis step size per member and group to start from
                (default ``sampler.step_size``).
            skip: per group, True to draw nothing from its generator (none of its windows
                is in ``rows`` and the generator is not used again).

        Returns:
            ``poses (B', K', H, 17, 2)`` with ``K'`` the selected members' futures (member
            by member), and the ``(M, G)`` step sizes after the call.

        Raises:
            ValueError: a sampler this path does not support.
        """
        if not self.supports(sampler):
            raise ValueError(f"sampler {sampler.name!r} is not supported by the stacked path")
        device = past.device
        G = len(generators)
        sel = list(range(self.M)) if members is None else list(members)
        w = self.weights(sel)
        ks_all = member_ks(num_samples, self.M)
        ks = [ks_all[i] for i in sel]
        kmax, Ms, H = max(ks), len(sel), self.cfg.horizon
        rwm = sampler.kernel == "rwm"
        S = sampler.steps if rwm else 0
        zs, noise, us = _draws(generators, groups, ks, H, S, skip, device)
        if sampler.temperature != 1.0:
            zs = zs * sampler.temperature
        if rows is not None:
            zs, noise, us = zs[:, :, rows], noise[:, :, :, rows], us[:, :, :, rows]
            groups, past, past_mask = groups[rows], past[rows], past_mask[rows]
        Bs = past.shape[0]
        steps = (
            torch.full((self.M, G), sampler.step_size, device=device)
            if step_sizes is None
            else step_sizes.clone()
        )
        if Bs == 0:
            return torch.empty(0, sum(ks), H, J, 2, device=device), steps
        N = Bs * kmax
        hs = [h.repeat_interleave(kmax, dim=1) for h in self.encode(w, past, past_mask)]
        last = torch.where(
            past_mask[:, -1, :, None],
            torch.nan_to_num(past[:, -1]),
            w.pose_mean.reshape(Ms, 1, J, 2),
        )  # (M, B', 17, 2)
        P = last.reshape(Ms, Bs, 1, D).expand(Ms, Bs, kmax, D).reshape(Ms, N, D)
        sizes = _StepSizes(steps, torch.as_tensor(sel, device=device), groups, ks, G) if rwm else None  # fmt: skip
        out = self._roll_out(w, hs, P, zs, noise, us, sizes, sampler)
        return _by_window(out, ks, Bs), steps

    def _roll_out(
        self,
        w: _Weights,
        hs: list[Tensor],
        P: Tensor,
        zs: Tensor,
        noise: Tensor,
        us: Tensor,
        sizes: _StepSizes | None,
        sampler: SamplerConfig,
    ) -> Tensor:
        """The autoregressive rollout of ``N = B * kmax`` futures per member: from the
        encoder states ``hs`` (per layer ``(M, N, hidden)``), the last observed poses ``P
        (M, N, 34)`` and the call's draws (:func:`_draws`, rows selected), frame by frame:
        the flow maps ``z`` to a displacement, Metropolis refines it (``sizes`` given: the
        rwm kernel), the pose moves by it and the GRU steps. Returns ``(M, H, N, 34)``."""
        Ms, N, _ = P.shape
        H, S = zs.shape[1], noise.shape[2]
        ones = torch.ones(Ms, N, J, device=P.device)
        out = torch.empty(Ms, H, N, D, device=P.device)
        for t in range(H):
            head = _lin(hs[-1], w.head_w, w.head_b)
            st, gh_last = head[..., : self.E + D], head[..., self.E + D :]
            e = torch.nn.functional.silu(st[..., : self.E])
            ctx = list(_lin(e, w.ctx_w, w.ctx_b).split(self.ctx_sizes, -1))
            x = self._flow_g(w, zs[:, t].reshape(Ms, N, D), ctx)
            if sizes is not None:
                x = _metropolis(
                    x,
                    st[..., self.E :],
                    w.point_log_scale,
                    noise[:, t].reshape(Ms, S, N, D),
                    us[:, t].reshape(Ms, S, N),
                    sizes,
                    sampler.target_accept if sampler.adapt else None,
                )
            x = x.clamp(-self.cfg.clip, self.cfg.clip)
            P = P + x * w.disp_std + w.disp_mean
            out[:, t] = P
            inp = torch.cat([(P - w.pose_mean) / w.pose_std, x, ones], -1)
            hs = self._gru_step(w, inp, hs, gh_last)
        return out


def _by_window(out: Tensor, ks: Sequence[int], B: int) -> Tensor:
    """Rolled-out poses ``(M, H, B * kmax, 34)`` -> ``(B, sum(ks), H, 17, 2)``: each window's
    futures member by member, member ``j``'s first ``ks[j]`` (the rest is padding)."""
    M, H, kmax = out.shape[0], out.shape[1], max(ks)
    fut = out.reshape(M, H, B, kmax, J, 2).permute(2, 0, 3, 1, 4, 5)  # (B, M, kmax, H, ..)
    if all(k == kmax for k in ks):
        return fut.reshape(B, M * kmax, H, J, 2)
    return torch.cat([fut[:, j, :k] for j, k in enumerate(ks)], 1)


class _StepSizes:
    """Metropolis step sizes ``steps (M, G)`` (per member and group, updated in place) as
    seen by the selected members ``sel`` rolling out ``B`` windows of ``groups`` with
    ``ks`` futures each (padded to ``max(ks)``; padding futures do not count)."""

    def __init__(self, steps: Tensor, sel: Tensor, groups: Tensor, ks: Sequence[int], G: int):
        self.steps, self.sel, self.groups, self.kmax = steps, sel, groups, max(ks)
        ks_t = torch.tensor(ks, device=steps.device)
        valid = torch.arange(self.kmax, device=steps.device) < ks_t[:, None]  # (M, kmax)
        self.valid = valid[:, None, :].expand(len(ks), len(groups), self.kmax).float()
        self.per_group = torch.zeros(len(ks), G, device=steps.device)
        self.per_group.index_add_(1, groups, self.valid.sum(-1))  # futures per group

    def per_future(self) -> Tensor:
        """``(M, B * kmax)`` each future's step size (its member's, its group's)."""
        return self.steps[self.sel][:, self.groups].repeat_interleave(self.kmax, dim=1)

    def adapt(self, accept: Tensor, target: float) -> None:
        """Scale each group's step size by ``exp((rate - target) / 2)``, ``rate`` its share
        of ``accept (M, B * kmax)``."""
        acc = (accept.reshape(self.valid.shape).float() * self.valid).sum(-1)
        rate = torch.zeros_like(self.per_group).index_add_(1, self.groups, acc)
        rate = rate / self.per_group.clamp_min(1)
        old = self.steps[self.sel]
        adapted = old * torch.exp(0.5 * (rate - target))
        self.steps[self.sel] = torch.where(self.per_group > 0, adapted, old)


def _metropolis(
    x: Tensor,
    mu: Tensor,
    log_scale: Tensor,
    noise: Tensor,
    us: Tensor,
    sizes: _StepSizes,
    target_accept: float | None,
) -> Tensor:
    """Random-walk Metropolis steps on one frame's displacements ``x (M, N, D)`` towards
    the point head's Gaussian (mean ``mu``, log scale ``log_scale``): per step ``s`` the
    proposal ``x + step * noise[:, s]`` is accepted where ``log(us[:, s])`` is below the
    log-density gain; step sizes adapt towards ``target_accept`` (None: fixed)."""
    cur = _point_logpdf(x, mu, log_scale)
    for s in range(noise.shape[1]):
        prop = x + sizes.per_future()[..., None] * noise[:, s]
        new = _point_logpdf(prop, mu, log_scale)
        accept = torch.log(us[:, s]) < new - cur
        x = torch.where(accept[..., None], prop, x)
        cur = torch.where(accept, new, cur)
        if target_accept is not None:
            sizes.adapt(accept, target_accept)
    return x


def _draws(
    generators: Sequence[torch.Generator],
    groups: Tensor,
    ks: Sequence[int],
    H: int,
    S: int,
    skip: Sequence[bool] | None,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """The random numbers of a call, in the member-by-member path's order: per group, per
    member (``ks[j]`` futures), per horizon frame: ``z``, then per Metropolis step (``S``)
    the proposal noise and its uniform. Returns ``z (M, H, B, kmax, D)``, noise
    ``(M, H, S, B, kmax, D)`` and uniforms ``(M, H, S, B, kmax)`` (padding: 0, 0, 1)."""
    B, G, kmax = groups.shape[0], len(generators), max(ks)
    zs = torch.zeros(len(ks), H, B, kmax, D, device=device)
    noise = torch.zeros(len(ks), H, S, B, kmax, D, device=device)
    us = torch.ones(len(ks), H, S, B, kmax, device=device)
    start = 0
    for g, n in enumerate(torch.bincount(groups, minlength=G).tolist()):
        gen, end = generators[g], start + n
        for j, k in enumerate(ks if n and not (skip and skip[g]) else []):
            for t in range(H):
                zs[j, t, start:end, :k] = torch.randn(n, k, D, generator=gen, device=device)
                for s in range(S):
                    noise[j, t, s, start:end, :k] = torch.randn(
                        n, k, D, generator=gen, device=device
                    )
                    us[j, t, s, start:end, :k] = torch.rand(n, k, generator=gen, device=device)
        start = end
    return zs, noise, us


def _point_logpdf(x: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """:func:`forecasting.flow.diag_normal_logpdf` over ``(M, N, D)``."""
    r = (x - mu) * torch.exp(-log_sigma)
    return -0.5 * (r * r).sum(-1) - log_sigma.sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi)


_CACHE: weakref.WeakKeyDictionary[nn.Module, WeightsCache[StackedForecaster]] = (
    weakref.WeakKeyDictionary()
)


def stacked_of(model: Forecaster) -> StackedForecaster:
    """The :class:`StackedForecaster` of ``model``, built once and rebuilt when any of its
    weights was replaced or changed in place since (:class:`WeightsCache`)."""
    cache = _CACHE.setdefault(model, WeightsCache())
    return cache.get(model, lambda: StackedForecaster(model))
