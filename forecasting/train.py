"""Training GRU-NF on pose windows.

The module that trains is separate from the module that computes
(:mod:`forecasting.torch_model`) and from the checkpoint format
(:mod:`forecasting.checkpoint`, which serving code reads without importing the trainer).
Inputs are plain arrays (:class:`TrackArrays`); callers (``pipelines``) turn pose files into
them.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from forecasting.allocator import retain_freed_memory
from forecasting.posture import PostureConfig, PostureModel, fit_normal_stats, train_posture
from forecasting.scoring import ScorerConfig, fit_error_scale, score_windows
from forecasting.torch_model import GRUNF, D, Ensemble, Forecaster, ModelConfig, to_tensor
from forecasting.windows import (
    Standardizer,
    WindowConfig,
    Windows,
    augment_flip,
    cut_windows,
    fill_unseen,
    normal_starts,
)

ERROR_SCALE_WINDOWS = 4096  # held-out windows the per-joint error scale is fitted on


@dataclass(slots=True)
class TrackArrays:
    """One person track as arrays, with its clip's frame labels.

    Attributes:
        clip: clip name (validation is split by clip).
        keypoints: ``(T, 17, 3)`` pixels, NaN where missing.
        frames: ``(T,)`` frame index of each row.
        labels: ``(N,)`` per-frame labels of the clip (1 = anomalous) or None (all normal).
    """

    clip: str
    keypoints: np.ndarray
    frames: np.ndarray
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (see :func:`train`)."""

    epochs: int = 40
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    patience: int = 5
    seed: int = 0
    #: Seed of the train/validation clip split, separate from ``seed`` so that models
    #: trained with different seeds see the same clips (seed variance = training variance).
    split_seed: int = 0
    val_fraction: float = 0.2
    point_weight: float = 1.0
    stride: int = 2
    flip_augment: bool = True
    normal_only: bool = True
    max_minutes: float = 18.0
    device: str = "auto"
    #: Ensemble members, trained from seeds ``seed * members + r`` (see
    #: :class:`forecasting.torch_model.Ensemble`); 1 trains a single model with ``seed``.
    members: int = 1
    #: View augmentation, degrees (0: none), drawn per window and batch: the body and its
    #: motion as a camera turned about its vertical axis by up to ``yaw`` (horizontal
    #: coordinates scaled by ``cos``), looking down by up to ``pitch`` more (vertical ones
    #: scaled by ``cos``) and rolled by up to ``roll`` either way (:func:`view_change`).
    roll: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class TrainResult:
    """What :func:`train` returns."""

    model: Forecaster
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_nll: float = math.inf
    seconds: float = 0.0
    #: ``{"seed", "val_nll", "best_epoch"}`` of every ensemble member (one entry without).
    members: list[dict[str, float]] = field(default_factory=list)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_clips(clips: Sequence[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Split clip names into (train, validation) sets, deterministically for a seed."""
    names = sorted(set(clips))
    if len(names) < 2 or val_fraction <= 0:
        return set(names), set()
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * len(names)))
    val = set(rng.choice(names, size=n_val, replace=False).tolist())
    return set(names) - val, val


def build_windows(
    tracks: Sequence[TrackArrays],
    wcfg: WindowConfig,
    stride: int,
    normal_only: bool,
    min_visible: float | None = None,
) -> Windows:
    """Cut windows from many tracks; ``Windows.track`` indexes ``tracks``.

    Arguments:
        tracks: the tracks.
        wcfg: window configuration.
        stride: distance between window starts (in kept frames).
        normal_only: keep only windows whose frames are all labelled normal.
        min_visible: drop windows with a smaller share of really-seen keypoints
            (default ``wcfg.min_visible``).
    """
    min_visible = wcfg.min_visible if min_visible is None else min_visible
    parts = []
    for i, tr in enumerate(tracks):
        starts = None
        if normal_only and tr.labels is not None:
            starts = normal_starts(tr.labels, tr.frames, wcfg, stride)
            if starts.size == 0:
                continue
        w = cut_windows(tr.keypoints, wcfg, stride=stride, starts=starts, track_index=i)
        if len(w) and min_visible > 0:
            w = w.select(w.visible.mean(axis=(1, 2)) >= min_visible)
        if len(w):
            parts.append(w)
    return Windows.concat(parts)


def window_span(wcfg: WindowConfig) -> int:
    """Consecutive track frames one window covers: ``(1 + t_obs + horizon - 1) *
    frame_step + 1``."""
    return (wcfg.length - 1) * wcfg.frame_step + 1


def require_windows(
    w: Windows, tracks: Sequence[TrackArrays], wcfg: WindowConfig, normal_only: bool, what: str
) -> None:
    """Raise ``ValueError`` saying why ``tracks`` gave no window, when ``w`` is empty.

    Arguments:
        w: the windows cut from ``tracks`` (:func:`build_windows`).
        tracks: the tracks.
        wcfg: window configuration.
        normal_only: whether windows with an anomalous frame were dropped.
        what: what the windows are for, e.g. ``"training windows in data/pose/train"``.

    Example:
        >>> import numpy as np
        >>> t = TrackArrays("c1", np.zeros((20, 17, 3), np.float32), np.arange(20))
        >>> require_windows(Windows.concat([]), [t], WindowConfig(), True, "windows")
        Traceback (most recent call last):
        ...
        ValueError: no windows: a window needs 25 consecutive frames of one track (1 + t_obs 12 + horizon 12, frame step 1), and the longest of the 1 tracks has 20 (clip 'c1'); use longer tracks or a shorter window (--t-obs, --horizon)
    """
    if len(w):
        return
    need = window_span(wcfg)
    shape = f"1 + t_obs {wcfg.t_obs} + horizon {wcfg.horizon}, frame step {wcfg.frame_step}"
    if not tracks:
        raise ValueError(f"no {what}: no person tracks")
    longest = max(tracks, key=lambda t: len(t.frames))
    if len(longest.frames) < need:
        raise ValueError(
            f"no {what}: a window needs {need} consecutive frames of one track ({shape}), and "
            f"the longest of the {len(tracks)} tracks has {len(longest.frames)} (clip "
            f"{longest.clip!r}); use longer tracks or a shorter window (--t-obs, --horizon)"
        )
    long_enough = sum(len(t.frames) >= need for t in tracks)
    why = [f"fewer than {wcfg.min_visible:.0%} of their keypoints seen"]
    if normal_only:
        why.insert(0, "an anomalous frame (labels)")
    raise ValueError(
        f"no {what}: {long_enough} of {len(tracks)} tracks are long enough for a window of "
        f"{need} frames ({shape}), but every window was dropped for {' or '.join(why)}"
    )


def _tensors(
    w: Windows, std: Standardizer, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return to_tensor(fill_unseen(w.poses, std.pose_mean), device), to_tensor(w.mask, device)


@torch.no_grad()
def evaluate_nll(
    model: Forecaster, poses: torch.Tensor, mask: torch.Tensor, batch: int = 1024
) -> float:
    """Mean NLL per future frame and dimension (nats) of windows, teacher-forced."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, poses.shape[0], batch):
        lp = model.log_prob(poses[i : i + batch], mask[i : i + batch])
        total += float(lp.sum())
        n += lp.shape[0] * model.cfg.horizon
    return -total / max(n, 1) / D


def train(
    train_w: Windows,
    val_w: Windows,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    flip_index: Sequence[int] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train GRU-NF with AdamW, gradient clipping and early stopping on validation NLL.

    Arguments:
        train_w: training windows (standardisation is fitted on them).
        val_w: validation windows (other clips); when empty, the last epoch is kept.
        mcfg: architecture.
        tcfg: optimisation settings; deterministic on CPU for a given ``seed``.
        flip_index: keypoint permutation of a horizontal flip (augmentation), e.g. COCO's.
        progress: show a progress bar with the loss.
        on_epoch: called with each epoch's record.

    Returns:
        :class:`TrainResult` holding the best model (lowest validation NLL), or with
        ``tcfg.members`` > 1 the :class:`Ensemble` of each member's best model (history
        records then carry a ``member`` index; ``best_val_nll`` is the mixture's).
    """
    retain_freed_memory()
    if len(train_w) == 0:
        raise ValueError("no training windows: tracks too short or no normal frames")
    if tcfg.members < 1:
        raise ValueError(f"members must be at least 1, not {tcfg.members}")
    if tcfg.epochs < 1 or tcfg.batch_size < 1:
        raise ValueError(
            f"epochs and batch_size must be at least 1, got {tcfg.epochs} and {tcfg.batch_size}"
        )
    t0 = time.perf_counter()
    runs: list[dict[str, float]] = []
    models: list[GRUNF] = []
    history: list[dict[str, float]] = []
    for r in range(tcfg.members):
        seed = tcfg.seed * tcfg.members + r  # = tcfg.seed for a single model
        res = _train_once(
            train_w, val_w, mcfg, replace(tcfg, seed=seed), flip_index, progress, on_epoch
        )
        assert isinstance(res.model, GRUNF)
        _fit_scale(res.model, train_w, val_w, seed)  # each member is usable on its own
        res.members = [{"seed": seed, "val_nll": res.best_val_nll, "best_epoch": res.best_epoch}]
        if tcfg.members == 1:
            return res
        runs.extend(res.members)
        history.extend({**h, "member": r} for h in res.history)
        models.append(res.model)
    ens, val_nll = make_ensemble(models, train_w, val_w, tcfg.seed)
    return TrainResult(
        model=ens,
        history=history,
        best_epoch=0,
        best_val_nll=val_nll if len(val_w) else min(r["val_nll"] for r in runs),
        seconds=time.perf_counter() - t0,
        members=runs,
    )


def make_ensemble(
    models: Sequence[GRUNF], train_w: Windows, val_w: Windows, seed: int
) -> tuple[Ensemble, float]:
    """Ensemble trained members and fit its error scale, as :func:`train` does.

    Arguments:
        models: trained members (same architecture and standardisation).
        train_w, val_w: the members' training and validation windows (the error scale is
            fitted on validation windows, or training windows when there are none).
        seed: seed of the error-scale fit (:func:`train` uses its ``tcfg.seed``).

    Returns:
        The ensemble and its validation NLL (NaN without validation windows).
    """
    ens = Ensemble(list(models)).eval()
    val_nll = math.nan
    if len(val_w):
        device = next(ens.parameters()).device
        val_nll = evaluate_nll(ens, *_tensors(val_w, ens.standardizer(), device))
    _fit_scale(ens, train_w, val_w, seed)
    return ens, val_nll


def _fit_scale(model: Forecaster, train_w: Windows, val_w: Windows, seed: int) -> None:
    """Per-joint typical error on held-out normal motion (training windows when none held out)."""
    ref = val_w if len(val_w) else train_w
    take = np.random.default_rng(seed).permutation(len(ref))[:ERROR_SCALE_WINDOWS]
    ref = ref.select(np.sort(take))
    fit_error_scale(model, ref.poses, ref.mask, ref.visible, seed=seed)


#: Share of the optimiser steps that warm the learning rate up (``OneCycleLR``'s phase).
WARMUP_SHARE = 0.1


def lr_schedule(
    opt: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``total_steps`` optimiser steps (one per batch).

    ``OneCycleLR`` (warm-up over :data:`WARMUP_SHARE` of the steps to ``lr``, then cosine
    decay) when its warm-up phase ends after step 0, i.e. more than 10 steps; with 10 steps
    or fewer (a few dozen windows, one or two epochs) it would divide by a zero-length
    warm-up, so the learning rate starts at ``lr`` and decays along half a cosine instead
    (to about ``lr / 40`` at the last of 10 steps).

    Raises:
        ValueError: ``total_steps`` < 1.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.AdamW([w], lr=1e-3)
        >>> s = lr_schedule(opt, 1e-3, 2)
        >>> [round(g["lr"], 6) for g in opt.param_groups]
        [0.001]
    """
    if total_steps < 1:
        raise ValueError(f"training needs at least one optimiser step, got {total_steps}")
    if WARMUP_SHARE * total_steps - 1 > 0:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total_steps, pct_start=WARMUP_SHARE
        )
    for g in opt.param_groups:
        g["lr"] = lr
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total_steps) / total_steps))
    )


def view_map(
    poses: torch.Tensor, roll: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor
) -> torch.Tensor:
    """Normalised windows ``(N, L, 17, 2)`` (image axes, origin at the torso centre) with
    horizontal coordinates scaled by ``sx``, vertical ones by ``sy``, then turned about the
    origin by ``roll`` degrees; ``roll``, ``sx``, ``sy``: ``(N,)``, one per window.

    >>> x = torch.tensor([[[[1.0, 0.0]]]])
    >>> y = view_map(x, torch.tensor([90.0]), torch.tensor([0.5]), torch.tensor([1.0]))
    >>> [round(float(v), 6) + 0.0 for v in y.flatten()]
    [0.0, 0.5]
    """
    c = torch.deg2rad(roll)
    cos, sin = torch.cos(c), torch.sin(c)
    # rows of the map (u, v) -> (cos*sx*u - sin*sy*v, sin*sx*u + cos*sy*v), per window
    m = torch.stack([torch.stack([cos * sx, -sin * sy], -1), torch.stack([sin * sx, cos * sy], -1)], -2)  # fmt: skip
    return torch.einsum("nij,nlkj->nlki", m.to(poses.dtype), poses)


def remeasured(poses: torch.Tensor, mask: torch.Tensor, t_obs: int) -> torch.Tensor:
    """Normalised windows ``(N, L, 17, 2)`` divided by the person's size measured again as
    :func:`forecasting.windows.cut_windows` measures it (after a view change the body's
    extent is another): the median over observed frames ``1 .. t_obs`` of the larger side
    of the extent of the keypoints ``mask (N, L, 17)`` marks, over frames with 3 or more of
    them; a window with no such frame keeps its scale. The origin (the torso centre) stays.

    >>> x = torch.zeros(1, 3, 17, 2)
    >>> x[..., 0] = torch.linspace(-1.0, 1.0, 17)  # 2 wide, 0 high: size 2
    >>> y = remeasured(x, torch.ones(1, 3, 17, dtype=torch.bool), 2)
    >>> float(y[..., 0].max()), float(y[..., 0].min())
    (0.5, -0.5)
    """
    obs, seen = poses[:, 1 : t_obs + 1], mask[:, 1 : t_obs + 1].bool()[..., None]
    hi = obs.masked_fill(~seen, -math.inf).amax(2)
    lo = obs.masked_fill(~seen, math.inf).amin(2)
    ext = (hi - lo).amax(-1)  # (N, t_obs)
    ext = torch.where(seen[..., 0].sum(-1) >= 3, ext, torch.full_like(ext, math.nan))
    # nanquantile, not nanmedian: the middle two averaged, as numpy (cut_windows) does
    size = torch.nan_to_num(ext.nanquantile(0.5, dim=1), nan=1.0).clamp_min(1e-3)
    return poses / size[:, None, None, None]


def view_change(poses: torch.Tensor, roll: float, yaw: float, pitch: float) -> torch.Tensor:
    """Normalised windows ``(N, L, 17, 2)`` as seen by another camera, one draw per window
    (torch's global generator; degrees): :func:`view_map` with ``sx = cos(a)``,
    ``a ~ U(0, yaw)``, ``sy = cos(b)``, ``b ~ U(0, pitch)`` (a body turned side-on, a camera
    looking down more: the flat approximation) and a turn ``c ~ U(-roll, roll)``. All zero:
    ``poses`` itself.

    >>> x = torch.tensor([[[[1.0, 0.0]]]])
    >>> view_change(x, 0.0, 0.0, 0.0) is x
    True
    >>> bool((view_change(x.expand(64, 1, 1, 2), 0.0, 60.0, 0.0)[..., 0] >= 0.5 - 1e-6).all())
    True
    """
    if roll <= 0 and yaw <= 0 and pitch <= 0:
        return poses

    def draw(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(poses.shape[0], device=poses.device)

    sx, sy = torch.cos(torch.deg2rad(draw(0.0, yaw))), torch.cos(torch.deg2rad(draw(0.0, pitch)))
    return view_map(poses, draw(-roll, roll), sx, sy)


def _train_once(
    train_w: Windows,
    val_w: Windows,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    flip_index: Sequence[int] | None,
    progress: bool,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    torch.manual_seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    device = pick_device(tcfg.device)
    if tcfg.flip_augment and flip_index is not None:
        train_w = Windows.concat([train_w, augment_flip(train_w, list(flip_index))])
    std = Standardizer.fit(train_w)
    model = GRUNF(mcfg, std).to(device)
    P, M = _tensors(train_w, std, device)
    Pv, Mv = _tensors(val_w, std, device) if len(val_w) else (None, None)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    steps_per_epoch = math.ceil(P.shape[0] / tcfg.batch_size)
    sched = lr_schedule(opt, tcfg.lr, tcfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(tcfg.seed)
    result = TrainResult(model=model)
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    t0 = time.perf_counter()
    bar = tqdm(
        total=tcfg.epochs * steps_per_epoch, disable=not progress, unit="batch", desc="train"
    )

    def viewed(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``x`` as another camera sees it, the size measured again (no view change: ``x``)."""
        y = view_change(x, tcfg.roll, tcfg.yaw, tcfg.pitch)
        return x if y is x else remeasured(y, m, mcfg.t_obs)

    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        perm = torch.randperm(P.shape[0], generator=gen).to(device)
        run, nb = 0.0, 0
        for i in range(0, P.shape[0], tcfg.batch_size):
            idx = perm[i : i + tcfg.batch_size]
            out = model(viewed(P[idx], M[idx]), M[idx])
            loss = -(out.log_prob.mean() + tcfg.point_weight * out.point_log_prob.mean()) / D
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            sched.step()
            run += float(loss.detach())
            nb += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{run / nb:.3f}")
        train_nll = evaluate_nll(model, P[: min(len(P), 8192)], M[: min(len(M), 8192)])
        val_nll = evaluate_nll(model, Pv, Mv) if Pv is not None and Mv is not None else math.nan
        rec = {"epoch": epoch, "loss": run / nb, "train_nll": train_nll, "val_nll": val_nll}
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
        score = val_nll if not math.isnan(val_nll) else train_nll
        if score < result.best_val_nll:
            result.best_val_nll = score
            result.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
        elapsed = (time.perf_counter() - t0) / 60
        if bad_epochs >= tcfg.patience or elapsed > tcfg.max_minutes:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


def fit_posture(
    model: Forecaster,
    train_w: Windows,
    val_w: Windows,
    cfg: PostureConfig,
    seed: int,
    flip_index: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> PostureModel:
    """Train posture flows for a trained forecaster and attach them (``model.posture``).

    The flows train on the forecaster's (normal) training windows, flip-augmented when
    ``flip_index`` is given, and keep their best epoch on the validation windows; the
    flows' and the motion scorer's (``minhde``, default K, GRU-NF) normal statistics are
    fitted on up to :data:`ERROR_SCALE_WINDOWS` validation windows (training windows when
    there are fewer than 2), as the error scale is, and so are the stillness term's. ``deadline``:
    see :func:`forecasting.posture.train_posture`.
    """
    std = model.standardizer()
    if flip_index is not None:
        train_w = Windows.concat([train_w, augment_flip(train_w, list(flip_index))])

    def fill(w: Windows) -> np.ndarray:
        return fill_unseen(w.poses, std.pose_mean)

    posture = train_posture(fill(train_w), fill(val_w), cfg, seed, log, deadline)
    fit_fused_stats(model, posture, val_w if len(val_w) >= 2 else train_w, seed)
    model.posture = posture
    return posture


def fit_fused_stats(model: Forecaster, posture: PostureModel, ref: Windows, seed: int) -> None:
    """Fit the normal statistics of ``posture``'s flows, of the motion scorer (``minhde``,
    default K, GRU-NF) and of the stillness term on up to :data:`ERROR_SCALE_WINDOWS` of the
    held-out normal windows ``ref`` (:func:`forecasting.posture.fit_normal_stats`)."""
    take = np.random.default_rng(seed).permutation(len(ref))[:ERROR_SCALE_WINDOWS]
    ref = ref.select(np.sort(take))
    motion = score_windows(
        model, ref.poses, ref.mask, ref.visible, ScorerConfig(name="minhde", seed=seed)
    ).score
    filled = fill_unseen(ref.poses, model.standardizer().pose_mean)
    fit_normal_stats(posture, filled, motion, ref.visible & ref.mask, 1 + model.cfg.t_obs)
