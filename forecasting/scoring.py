"""Anomaly scores: how unlikely a person's observed motion is under the forecaster.

For a person at time t the window is ``1 + t_obs + horizon`` frames ending at t: the model
is conditioned on the ``t_obs`` frames before the last ``horizon`` frames and the last
``horizon`` observed frames are scored. Scorers (select by name):

- ``kde``: draw K futures (GRU-NF or GRU-SNF; importance weights optional) and
  score each observed future keypoint by its negative log-likelihood under a Gaussian kernel
  density over the K sampled positions of that keypoint in that frame; bandwidth by
  Silverman's rule from the samples' spread, floored at ``min_bandwidth`` (normalised units)
  so a confidently still forecast does not turn detector jitter into alarms. Missing
  keypoints are masked. Per-joint contributions are the per-keypoint NLLs.
- ``nll``: the flow's exact teacher-forced ``-log p(future | past)`` per dimension; per-joint
  contributions from the point head's Gaussian residuals.
- ``minade``: the best of K samples' average displacement error, each joint's error in
  units of that joint's typical error on held-out normal motion (``model.error_scale``,
  fitted after training by :func:`fit_error_scale`), so a jittery wrist does not drown out a
  steady head; the score is the log of that error (errors are heavy-tailed, and the frame
  smoothing then averages ratios, not raw distances). Per-joint from the best sample.
- ``minfde``: the same at the last frame only (best-of-K final displacement error).
- ``minhde`` (the default for a checkpoint without posture flows): the same with frame ``h = 1..H`` of the horizon weighted by
  ``h ** horizon_power`` (3: the last third of the horizon carries ~70% of the weight). The
  far end of the horizon is where normal and abnormal motion part (the first future frames
  are nearly determined by the past), yet a short anomaly early in the horizon, which
  ``minfde`` cannot see, still counts.
- ``posture``: how unlikely the window's body configuration is, whatever its motion: the
  mean standardised NLL of the checkpoint's posture flows (:mod:`forecasting.posture`;
  ``posewatch posture`` adds them). Per-joint: each joint's latent energy, 1 = typical.
- ``fused`` (the default, ``auto``, for a checkpoint with posture flows): ``minhde`` and
  ``posture`` together, each in units of its spread on held-out normal windows, plus the
  stillness term's excess over normal (``z_motion + weight * z_posture + still``,
  :mod:`forecasting.stillness`): motion the forecaster did not expect, a posture the flows
  have not seen, or a body that stops dead. Per-joint: the sum of the motion and posture
  parts' contributions (the stillness term is a whole-body one).

Several scorers can be computed from one draw of futures (:func:`score_windows_many`); each
gets exactly the scores it would get alone with the same seed.

Shapes: ``poses (N, L, 17, 2)`` normalised windows, ``mask`` / ``visible (N, L, 17)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from forecasting.allocator import retain_freed_memory
from forecasting.defaults import AUTO as AUTO  # re-exported: the default scorer's alias
from forecasting.defaults import (
    DEFAULT_SAMPLES,
    DEFAULT_SCORER,
    EARLY_STOP_MARGINS,
    FALLBACK_SCORER,
)
from forecasting.defaults import SCORERS as SCORERS  # re-exported: the scorer registry
from forecasting.defaults import ScorerName as ScorerName
from forecasting.posture import PostureModel
from forecasting.snf import GRU_NF, SamplerConfig
from forecasting.stacked import StackedForecaster, stacked_of
from forecasting.stillness import past_log_speed, stillness
from forecasting.torch_model import GRUNF, Ensemble, Forecaster, to_tensor
from forecasting.windows import fill_unseen

#: What ``fused`` takes from the posture model for a batch: the model, its scores ``(B,)``
#: and per-joint contributions ``(B, 17)``, the windows' stillness and observed log speed
#: ``(B,)`` (None where the model's fused score has no such term).
Fusing = tuple[PostureModel, Tensor, Tensor, Tensor | None, Tensor | None]

#: Scorers that need K drawn futures.
SAMPLE_SCORERS: tuple[ScorerName, ...] = ("minhde", "minfde", "minade", "kde", "fused")
#: Scorers whose score only falls as futures are added (best-of-K): early stopping is exact
#: about which windows stay below a bound.
EARLY_STOP_SCORERS: tuple[ScorerName, ...] = tuple(EARLY_STOP_MARGINS)


def early_stop_stages(members: int) -> list[list[int]]:
    """Members drawn per early-stop stage: the first alone, then (7 members) the next two,
    then the rest; a window below the bound after a stage draws no more.

    >>> early_stop_stages(7), early_stop_stages(3)
    ([[0], [1, 2], [3, 4, 5, 6]], [[0], [1, 2]])
    """
    if members >= 4:
        return [[0], [1, 2], list(range(3, members))]
    return [[0], list(range(1, members))]


#: Scorers that need the checkpoint's posture flows (:mod:`forecasting.posture`).
POSTURE_SCORERS: tuple[ScorerName, ...] = ("posture", "fused")


@dataclass(frozen=True)
class ScorerConfig:
    """How windows are scored.

    Attributes:
        name: ``minhde`` (default here; the service's ``auto`` is ``fused`` for a checkpoint
            with posture flows, :func:`resolve_scorer`), ``minfde``, ``minade``, ``kde``,
            ``nll``, ``posture`` or ``fused``.
        num_samples: K futures per window (every scorer but ``nll``).
        sampler: GRU-NF or a GRU-SNF configuration.
        use_weights: weight samples by their SNF path weights (``kde``).
        min_bandwidth: bandwidth floor of the kernel density, normalised units.
        log_error: the ``min*de`` scorers score the log of the (scaled) best-of-K error.
        horizon_power: ``minhde`` weighs horizon frame ``h`` by ``h ** horizon_power``.
        batch: windows per model call.
        seed: torch seed before scoring (reproducible scores).
        exact: draw member by member through ``nn.GRU`` and the flow modules (the path
            before the stacked one, kept for comparison); the default evaluates every
            member in one batched call (:mod:`forecasting.stacked`), same draws and scores
            up to float rounding, and falls back to this path for samplers it lacks.
        stop_below: early stop: a window whose score from the first member's futures is
            already below this is not drawn further (its reported score is that upper
            bound of the full-K score; best-of-K errors only fall with more futures). For
            the best-of-K scorers and ``fused`` of an ensemble on the stacked path; None
            (default) draws all K for every window. Live serving sets it from the alert
            threshold minus a margin (``forecaster.early_stop_margin``).
    """

    name: ScorerName = "minhde"
    num_samples: int = DEFAULT_SAMPLES
    sampler: SamplerConfig = field(default_factory=lambda: GRU_NF)
    use_weights: bool = False
    min_bandwidth: float = 0.01
    log_error: bool = True
    horizon_power: float = 3.0
    batch: int = 256
    seed: int = 0
    exact: bool = False
    stop_below: float | None = None

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


def _batches(n: int, size: int, run: np.ndarray | None = None) -> Iterator[slice]:
    """Slices of at most ``size`` windows. With ``run`` (``(n,)`` group of each window,
    non-decreasing) a cut never falls inside a group except every ``size`` windows from
    the group's start, where a call of that group alone would cut too (so each group gets
    the draws of a call of its own)."""
    if run is None:
        for i in range(0, n, size):
            yield slice(i, min(i + size, n))
        return
    starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
    bounds = np.r_[starts, n]
    i = 0
    while i < n:
        g = int(np.searchsorted(starts, i, side="right")) - 1  # group holding window i
        end = min(i + size, int(bounds[g + 1]))  # a group of its own: cut every size
        if i == starts[g]:  # whole groups while they fit
            k = int(np.searchsorted(bounds, i + size, side="right")) - 1
            end = max(end, int(bounds[k]))
        yield slice(i, end)
        i = end


def score_windows(
    model: Forecaster,
    poses: np.ndarray,
    mask: np.ndarray,
    visible: np.ndarray,
    cfg: ScorerConfig,
    seeds: np.ndarray | None = None,
) -> WindowScores:
    """Score windows with the configured scorer, batched.

    Arguments:
        model: trained forecaster (its ``cfg.t_obs`` / ``cfg.horizon`` fix the window).
        poses: ``(N, 1 + t_obs + horizon, 17, 2)`` normalised windows, NaN where missing.
        mask: ``(N, L, 17)`` seen-or-filled keypoints.
        visible: ``(N, L, 17)`` really-seen keypoints (only these are scored).
        cfg: scorer configuration.
        seeds: ``(N,)`` a seed per window: consecutive windows with the same seed are a
            group drawing from a generator of that seed (a live camera frame's persons),
            with the futures they would get scored alone; default: one group, ``cfg.seed``.
    """
    return score_windows_many(model, poses, mask, visible, cfg, (cfg.name,), seeds)[cfg.name]


def _posture_for(model: Forecaster, names: Sequence[str]) -> PostureModel | None:
    """The checkpoint's posture model when one of ``names`` needs it (else None).

    Raises:
        ValueError: an unknown scorer name, or a posture scorer and no posture flows.
    """
    for name in names:
        if name not in SCORERS:
            raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(SCORERS)}")
    if not any(k in POSTURE_SCORERS for k in names):
        return None
    posture = posture_of(model)
    if posture is None:
        raise ValueError(
            "this checkpoint has no posture flows, which the posture and fused scorers need: "
            "add them with `posewatch posture --model CKPT`, or choose minhde"
        )
    return posture


def _direct_scores(
    model: Forecaster,
    posture: PostureModel | None,
    names: Sequence[str],
    p: Tensor,
    m: Tensor,
    v: Tensor,
    seen: Tensor | None,
    sl: slice,
    n_obs: int,
) -> tuple[dict[str, tuple[Tensor, Tensor]], Fusing | None]:
    """One batch's scores that need no futures (``nll``, ``posture``: window and per-joint),
    and what ``fused`` takes from the posture model (its scores, per-joint contributions and
    the windows' stillness and observed log speed when ``seen``, the whole call's seen
    keypoints, is given)."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    if "nll" in names:
        out["nll"] = _nll_scores(model, p, m, v)
    if posture is None:
        return out, None
    sp, jp = posture(p)
    if "posture" in names:
        out["posture"] = sp, jp
    if seen is None:
        return out, (posture, sp, jp, None, None)
    past = past_log_speed(p, seen[sl], n_obs)  # once: the stillness term's past part too
    return out, (
        posture,
        sp,
        jp,
        stillness(p, seen[sl], n_obs, past=past) if posture.cfg.stillness else None,
        past if posture.cfg.speed_conditioned else None,
    )


def score_windows_many(
    model: Forecaster,
    poses: np.ndarray,
    mask: np.ndarray,
    visible: np.ndarray,
    cfg: ScorerConfig,
    names: Sequence[str],
    seeds: np.ndarray | None = None,
) -> dict[str, WindowScores]:
    """Score windows with several scorers; the sample-based ones share one draw of futures.

    Arguments are those of :func:`score_windows`; ``names`` replaces ``cfg.name``. Each
    scorer's scores equal those of a :func:`score_windows` call with that name alone
    (early stopping, ``cfg.stop_below``, applies only when one scorer is asked for).
    """
    retain_freed_memory()
    posture = _posture_for(model, names)
    n = poses.shape[0]
    if n == 0:
        return {
            k: WindowScores(np.zeros(0, np.float32), np.zeros((0, 17), np.float32)) for k in names
        }
    n_obs, P, M, V = _inputs(model, poses, mask, visible)
    # fused's stillness term and speed-conditioned motion part (posture flows fitted with
    # them) count only really seen keypoints
    still = (
        "fused" in names
        and posture is not None
        and (posture.cfg.stillness or posture.cfg.speed_conditioned)
    )
    seen = to_tensor(visible & mask, P.device) if still else None
    # Generators of their own: the same seed gives the same draws even while other threads
    # (cold start training) use torch's global generator. One per group of windows.
    run, gens = _generators(n, seeds, cfg.seed, P.device)
    scores: dict[str, list[Tensor]] = {k: [] for k in names}
    joints: dict[str, list[Tensor]] = {k: [] for k in names}
    forecast_s = 0.0
    sampled = [k for k in names if k in SAMPLE_SCORERS]
    stacked = None if cfg.exact else stacked_of(model)
    if stacked is not None and not stacked.supports(cfg.sampler):
        stacked = None
    grad_ok = cfg.sampler.kernel == "mala"
    ctx = torch.no_grad() if grad_ok else torch.inference_mode()
    with ctx:
        for sl in _batches(n, cfg.batch, run if seeds is not None else None):
            p, m, v = P[sl], M[sl], V[sl]
            direct, post = _direct_scores(model, posture, names, p, m, v, seen, sl, n_obs)
            for name, (s, j) in direct.items():
                scores[name].append(s.float().cpu())
                joints[name].append(j.float().cpu())
            if not sampled:
                continue

            brun = run[sl]
            groups = torch.as_tensor(brun - brun[0], device=P.device)
            bgens = gens[int(brun[0]) : int(brun[-1]) + 1]
            # a generator serving the next batch too must draw whatever happens here
            carries = bool(sl.stop < n and run[sl.stop] == run[sl.stop - 1])
            sampled_out, secs = _sampled_scores(
                model, stacked, cfg, sampled, (p, m, v), n_obs, post, bgens, groups, carries
            )
            forecast_s += secs
            for name, (s, j) in sampled_out.items():
                scores[name].append(s.float().cpu())
                joints[name].append(j.float().cpu())
    return {
        k: WindowScores(torch.cat(scores[k]).numpy(), torch.cat(joints[k]).numpy(), forecast_s)
        for k in names
    }


def _sampled_scores(
    model: Forecaster,
    stacked: StackedForecaster | None,
    cfg: ScorerConfig,
    sampled: Sequence[str],
    batch: tuple[Tensor, Tensor, Tensor],
    n_obs: int,
    post: Fusing | None,
    gens: list[torch.Generator],
    groups: Tensor,
    carries: bool,
) -> tuple[dict[str, tuple[Tensor, Tensor]], float]:
    """One batch's sample-based scores (``sampled``, names of :data:`SAMPLE_SCORERS`), all
    from one draw of futures: ``name -> (scores (B,), per-joint (B, 17))``, and the seconds
    spent drawing (with early stop, drawing and scoring: they alternate). ``batch`` is the batch's ``(poses, mask, visible)``; early stopping
    (:func:`_early_stop_scores`) when ``cfg.stop_below`` is set, the stacked path draws, and
    one scorer of :data:`EARLY_STOP_SCORERS` is asked for (``carries``: a generator serves
    the next batch too)."""
    p, m, v = batch
    truth = p[:, n_obs:]

    def finish(name: str, smp: Tensor, rows: slice | Tensor = slice(None)) -> tuple[Tensor, Tensor]:  # fmt: skip
        return _best_of_k_scores(name, model, cfg, smp, truth[rows], v[rows], post, rows)

    t0 = time.perf_counter()
    if (
        stacked is not None
        and cfg.stop_below is not None
        and stacked.M > 1
        and len(sampled) == 1
        and sampled[0] in EARLY_STOP_SCORERS
    ):
        (name,) = sampled
        out = _early_stop_scores(
            stacked,
            p[:, :n_obs],
            m[:, :n_obs],
            cfg,
            gens,
            groups,
            carries,
            lambda smp, rows: finish(name, smp, rows),
        )
        return {name: out}, time.perf_counter() - t0
    smp, lw = _draw(model, stacked, p[:, :n_obs], m[:, :n_obs], cfg, gens, groups)
    secs = time.perf_counter() - t0
    return {
        name: _sample_scores(name, model, cfg, smp, lw, truth, v)
        if name == "kde"
        else finish(name, smp)
        for name in sampled
    }, secs


def _generators(
    n: int, seeds: np.ndarray | None, seed: int, device: torch.device
) -> tuple[np.ndarray, list[torch.Generator]]:
    """Each window's run ``(n,)`` (consecutive windows of one seed share a run) and one
    generator per run, seeded with ``seeds`` (one per window) or, without, one of ``seed``.

    Raises:
        ValueError: ``seeds`` of another shape than ``(n,)``.
    """
    run = np.zeros(n, np.int64)
    if seeds is None:
        return run, [torch.Generator(device=device).manual_seed(seed)]
    seeds = np.asarray(seeds, np.int64)
    if seeds.shape != (n,):
        raise ValueError(f"seeds must have shape ({n},), got {seeds.shape}")
    run[1:] = np.cumsum(seeds[1:] != seeds[:-1])
    starts = np.flatnonzero(np.r_[True, seeds[1:] != seeds[:-1]])
    return run, [torch.Generator(device=device).manual_seed(int(seeds[i])) for i in starts]


def _draw(
    model: Forecaster,
    stacked: StackedForecaster | None,
    p_obs: Tensor,
    m_obs: Tensor,
    cfg: ScorerConfig,
    bgens: list[torch.Generator],
    groups: Tensor,
) -> tuple[Tensor, Tensor]:
    """One batch's K futures ``(B, K, H, 17, 2)`` and their log-weights ``(B, K)``: through
    ``stacked`` (all members at once; equal weights) or, without, member by member with one
    call per group of windows (``groups`` indexes ``bgens``)."""
    if stacked is not None:
        smp, _ = stacked.sample(p_obs, m_obs, cfg.num_samples, cfg.sampler, bgens, groups)
        return smp, torch.zeros(smp.shape[:2], device=smp.device)
    outs = [
        model.sample(
            p_obs[groups == g],
            m_obs[groups == g],
            None,
            cfg.num_samples,
            cfg.sampler,
            generator=gen,
        )
        for g, gen in enumerate(bgens)
    ]
    return torch.cat([o.poses for o in outs]), torch.cat([o.log_weights for o in outs])


def _early_stop_scores(
    stacked: StackedForecaster,
    p_obs: Tensor,
    m_obs: Tensor,
    cfg: ScorerConfig,
    bgens: list[torch.Generator],
    groups: Tensor,
    carries: bool,
    finish: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """One batch's scores ``(B,)`` and per-joint ``(B, 17)`` with early stop: futures drawn
    member stage by member stage (:func:`early_stop_stages`); after each stage the windows
    whose score so far is below ``cfg.stop_below`` are done, the others go on. ``finish``
    scores the futures drawn so far of the rows given; ``carries``: the last generator
    serves the next batch too, so it must draw whatever happens here."""
    assert cfg.stop_below is not None
    live = torch.arange(p_obs.shape[0], device=p_obs.device)
    have: Tensor | None = None  # the live windows' futures so far
    steps: Tensor | None = None
    s = j = torch.empty(0)
    for i, members in enumerate(early_stop_stages(stacked.M)):
        going = torch.zeros(len(bgens), dtype=torch.bool)
        going[groups[live].cpu()] = True
        going[-1] |= carries
        if not bool(going.any()):
            break
        smp, steps = stacked.sample(
            p_obs,
            m_obs,
            cfg.num_samples,
            cfg.sampler,
            bgens,
            groups,
            members,
            rows=live if i else None,
            step_sizes=steps,
            skip=(~going).tolist(),
        )
        have = smp if have is None else torch.cat([have, smp], 1)
        if not len(live):
            continue
        si, ji = finish(have, live)
        if i == 0:
            s, j = si.clone(), ji.clone()
        else:
            s[live], j[live] = si, ji
        go_on = si >= cfg.stop_below
        live, have = live[go_on], have[go_on]
    return s, j


def resolve_scorer(name: str, model: Forecaster) -> ScorerName:
    """A scorer name for ``model``: ``auto`` is :data:`DEFAULT_SCORER` for a model whose
    posture flows have the stillness term, :data:`FALLBACK_SCORER` otherwise; other names
    are checked (the posture ones need the checkpoint's posture flows).

    Raises:
        ValueError: an unknown name, or a posture scorer for a model without posture flows.
    """
    if name == AUTO:
        posture = posture_of(model)
        return DEFAULT_SCORER if posture is not None and posture.cfg.stillness else FALLBACK_SCORER
    for known in SCORERS:
        if name == known:
            if known in POSTURE_SCORERS and posture_of(model) is None:
                raise ValueError(
                    f"scorer {name!r} needs posture flows, which this checkpoint lacks: add "
                    "them with `posewatch posture --model CKPT`, or choose minhde"
                )
            return known
    raise ValueError(f"unknown scorer {name!r}; choose from {AUTO}, {', '.join(SCORERS)}")


def early_stop_bound(scorer: str, threshold: float, margin: float | str) -> float | None:
    """The ``stop_below`` of live scoring: ``threshold`` minus ``margin``, in the units of
    ``scorer``'s score; ``margin`` :data:`AUTO` takes the scorer's own
    (:data:`~forecasting.defaults.EARLY_STOP_MARGINS`: 1.5 for the best-of-K errors, 3.0 for
    ``fused``). None: a scorer that never stops early (``kde``, ``posture``).

    >>> early_stop_bound("fused", 5.5, "auto"), early_stop_bound("minhde", 2.0, 0.5)
    (2.5, 1.5)

    Raises:
        ValueError: a margin that is neither a number nor ``auto``.
    """
    if scorer not in EARLY_STOP_SCORERS:
        return None
    if isinstance(margin, str):
        if margin != AUTO:
            raise ValueError(f"early stop margin {margin!r}: give a number or {AUTO!r}")
        margin = EARLY_STOP_MARGINS[scorer]
    return threshold - float(margin)


def available_scorers(model: Forecaster) -> tuple[ScorerName, ...]:
    """Every scorer ``model`` can run (the posture ones only with posture flows)."""
    has = posture_of(model) is not None
    return tuple(k for k in SCORERS if has or k not in POSTURE_SCORERS)


def posture_of(model: Forecaster) -> PostureModel | None:
    """The posture flows attached to a forecaster (``model.posture``), or None."""
    posture = getattr(model, "posture", None)
    return posture if isinstance(posture, PostureModel) else None


def _inputs(
    model: Forecaster, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray
) -> tuple[int, Tensor, Tensor, Tensor]:
    """Observed frames, filled poses, mask and the future's scored keypoints as tensors."""
    device = next(model.parameters()).device
    n_obs = 1 + model.cfg.t_obs
    P = to_tensor(fill_unseen(poses, model.standardizer().pose_mean), device)
    M = to_tensor(mask, device)
    V = to_tensor(visible[:, n_obs:] & mask[:, n_obs:], device)
    return n_obs, P, M, V


def _best_of_k_scores(
    name: str,
    model: Forecaster,
    cfg: ScorerConfig,
    smp: Tensor,
    truth: Tensor,
    v: Tensor,
    post: Fusing | None,
    rows: slice | Tensor,
) -> tuple[Tensor, Tensor]:
    """A best-of-K scorer (``fused``: ``minhde`` fused with the posture scores, per-joint
    posture contributions and stillness ``post`` of the batch, taken at ``rows``)."""
    motion = "minhde" if name == "fused" else name
    s, j = _sample_scores(motion, model, cfg, smp, torch.zeros(smp.shape[:2]), truth, v)
    if name == "fused":
        assert post is not None
        posture, sp, jp, still, speed = post
        s = posture.fuse(
            s,
            sp[rows],
            None if still is None else still[rows],
            None if speed is None else speed[rows],
        )
        j = j + posture.cfg.weight * jp[rows]
    return s, j


def _sample_scores(
    name: str,
    model: Forecaster,
    cfg: ScorerConfig,
    smp: Tensor,
    log_weights: Tensor,
    truth: Tensor,
    v: Tensor,
) -> tuple[Tensor, Tensor]:
    """Score ``(B,)`` and per-joint ``(B, 17)`` of one sample-based scorer."""
    if name == "kde":
        w = torch.softmax(log_weights, 1) if cfg.use_weights else None
        return _masked_joint_mean(kde_nll(smp, truth, v, w, cfg.min_bandwidth), v)
    H = truth.shape[1]
    steps = torch.arange(1, H + 1, dtype=smp.dtype, device=smp.device)
    if name == "minade":
        weight = torch.ones_like(steps)
    elif name == "minfde":
        weight = (steps == H).to(smp.dtype)
    else:  # minhde
        weight = steps**cfg.horizon_power
    vf = v.to(smp.dtype)
    w = weight.expand(truth.shape[0], H)  # (B, H)
    # A window with no visible keypoint where the weight is falls back to equal weights.
    seen = (vf * w[:, :, None]).sum((1, 2)) > 0
    w = torch.where(seen[:, None], w, torch.ones_like(w))
    err, dbest = _best_of_k(smp, truth, v, model.error_scale, w)
    vw = vf * w[:, :, None]  # (B, H, 17)
    cnt = vw.sum(1)  # per joint, the weighted mean over the horizon
    j = (dbest * vw).sum(1) / cnt.clamp_min(1e-12)
    j = torch.where(cnt > 0, j, torch.full_like(j, math.nan))
    return (err.clamp_min(1e-6).log() if cfg.log_error else err), j


def _best_of_k(
    smp: Tensor, truth: Tensor, v: Tensor, scale: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Best sample's weighted mean scaled error ``(B,)`` and its errors ``(B, H, 17)``.

    ``smp (B, K, H, 17, 2)``, ``truth (B, H, 17, 2)``, ``v (B, H, 17)`` visible, ``scale (17,)``,
    ``weight (B, H)`` per window and horizon frame (None: equal). A window with no visible
    weighted keypoint gets error 0.
    """
    d = torch.linalg.vector_norm(smp - truth[:, None], dim=-1) / scale.to(smp.dtype)
    vm = v[:, None].to(d.dtype)
    if weight is not None:
        vm = vm * weight.to(d.dtype)[:, None, :, None]
    err = (d * vm).sum((2, 3)) / vm.sum((2, 3)).clamp_min(1e-12)  # (B, K)
    best = err.argmin(1)
    return err.gather(1, best[:, None])[:, 0], d[torch.arange(d.shape[0]), best]


def fit_error_scale(
    model: Forecaster,
    poses: np.ndarray,
    mask: np.ndarray,
    visible: np.ndarray,
    num_samples: int = DEFAULT_SAMPLES,
    sampler: SamplerConfig = GRU_NF,
    seed: int = 0,
) -> np.ndarray:
    """Fit and set ``model.error_scale``: each joint's median best-of-K error on normal windows.

    Arguments:
        model: trained forecaster; its ``error_scale`` buffer is overwritten.
        poses, mask, visible: held-out normal windows (as for :func:`score_windows`).
        num_samples: K (use the scorer's K).
        sampler: sampler used for the fit.
        seed: torch seed.

    Returns:
        ``(17,)`` the fitted scale (joints never seen keep 1).
    """
    J = model.error_scale.shape[0]
    scale = np.ones(J, np.float32)
    if len(poses) == 0:
        return scale
    n_obs, P, M, V = _inputs(model, poses, mask, visible)
    ones = torch.ones(J, device=P.device)
    errs, seen = [], []
    torch.manual_seed(seed)
    with torch.inference_mode():
        for sl in _batches(len(poses), 256):
            p, m, v = P[sl], M[sl], V[sl]
            out = model.sample(p[:, :n_obs], m[:, :n_obs], None, num_samples, sampler)
            _, dbest = _best_of_k(out.poses, p[:, n_obs:], v, ones)
            errs.append(dbest.reshape(-1, J).cpu())
            seen.append(v.reshape(-1, J).cpu())
    e, ok = torch.cat(errs), torch.cat(seen)
    for j in range(J):
        if ok[:, j].any():
            scale[j] = max(float(e[ok[:, j], j].median()), 1e-4)
    model.error_scale.copy_(torch.as_tensor(scale, device=P.device))
    return scale


def _nll_scores(model: Forecaster, p: Tensor, m: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Mean teacher-forced NLL per future frame and dimension, and per-joint residuals.

    An ensemble scores by its mixture density; its per-joint parts are the members' mean.
    """
    if isinstance(model, Ensemble):
        parts = [_nll_scores(member, p, m, v) for member in model.member_list()]
        n = model.cfg.horizon * 2 * 17
        lp = torch.stack([-s for s, _ in parts]) * n  # members' log p(future | past)
        s = -(torch.logsumexp(lp, 0) - math.log(len(parts))) / n
        return s, torch.stack([j for _, j in parts]).mean(0)
    return _member_nll_scores(model, p, m, v)


def _member_nll_scores(model: GRUNF, p: Tensor, m: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
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
