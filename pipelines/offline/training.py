"""What ``posewatch train``, ``ensemble``, ``posture`` and ``forecast-eval`` do.

Each command is one function taking one frozen request whose defaults are the command
line's. Progress messages go to this module's logger (the command line prints them).

Example (a request holds the command line's defaults):
    >>> from pathlib import Path
    >>> req = TrainRequest(data=Path("data/aihub2"), out=Path("model.pt"), seed=3)
    >>> req.epochs, req.members, req.split
    (40, 7, 'train')
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import Checkpoint, attach_posture, load_checkpoint, save_checkpoint
from forecasting.defaults import DEFAULT_MEMBERS, MODEL_FPS, POSTURE_FLOWS
from forecasting.evaluate import evaluate_forecasts, format_table, rows_as_dicts
from forecasting.posture import PostureConfig, with_fused_terms
from forecasting.samplers import default_samplers, sampler_by_name
from forecasting.scoring import posture_of
from forecasting.snf import SamplerConfig
from forecasting.torch_model import GRUNF, ModelConfig, count_parameters
from forecasting.train import (
    TrainConfig,
    build_windows,
    fit_fused_stats,
    fit_posture,
    make_ensemble,
    require_windows,
    split_clips,
    train,
)
from forecasting.windows import WindowConfig, Windows
from pipelines.offline.plots import plot_loss_curve
from pipelines.tracks import load_tracks

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainRequest:
    """What to train (``posewatch train``; defaults are the command line's).

    Attributes:
        data: dataset folder (``pose/<split>/`` + ``gt/``).
        out: checkpoint to write (``.pt``); the loss curve goes beside it (``.loss.png``).
        split: split to train on (its clips are split into training and validation clips).
        normal_only: train on all-normal windows only (labels drop anomalous windows);
            False trains on every window (STG-NF's unsupervised regime).
        epochs: maximum epochs.
        seed: random seed (training is deterministic on the CPU for a seed).
        t_obs: observed frames per window.
        horizon: future frames per window.
        frame_step: keep every n-th frame.
        device: ``auto``, ``cpu`` or ``cuda``.
        max_minutes: stop training after this many minutes (per member).
        split_seed: seed of the train/validation clip split (fixed across seeds).
        members: ensemble members (seeds ``seed * members + r``); 1 trains one model.
        posture_flows: posture flows added after training (seeds
            ``seed * posture_flows + f``, :func:`run_posture`), what the default ``fused``
            scorer needs; 0 adds none (the model is then scored by ``minhde``).
        progress: show a progress bar with the loss (stderr).
        fps: frame rate of the dataset, frames/s (recorded in the checkpoint: cameras at
            another rate are scored on this time axis, :func:`forecasting.windows.model_frames`).
        roll, yaw, pitch: the forecaster's view augmentation, degrees
            (:func:`forecasting.train.view_change`; 0: none).
    """

    data: Path
    out: Path
    split: str = "train"
    normal_only: bool = True
    epochs: int = 40
    seed: int = 0
    t_obs: int = 12
    horizon: int = 12
    frame_step: int = 1
    device: str = "auto"
    max_minutes: float = 18.0
    split_seed: int = 0
    members: int = DEFAULT_MEMBERS
    posture_flows: int = POSTURE_FLOWS
    progress: bool = True
    fps: float = MODEL_FPS
    roll: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0


@dataclass(frozen=True, slots=True)
class EnsembleRequest:
    """Members to join (``posewatch ensemble``).

    Attributes:
        models: member checkpoints (single models, at least two; a list is turned into a
            tuple).
        out: ensemble checkpoint to write.
        data: dataset folder (default: the one recorded in the first checkpoint).
    """

    models: tuple[Path, ...]
    out: Path
    data: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))


@dataclass(frozen=True, slots=True)
class PostureRequest:
    """Posture flows to add to a checkpoint (``posewatch posture``).

    Attributes:
        model: checkpoint written by ``posewatch train`` (rewritten in place).
        config: posture settings (flows, epochs per flow, weight in the fused score).
        seed: flow seeds ``seed * flows + f`` (default: the checkpoint's training seed).
        data: dataset folder (default: the one recorded in the checkpoint).
        refit_stats: keep the checkpoint's flows and refit only the normal statistics of
            the fused score (flows, motion and the stillness term) on its validation
            windows, with the stillness term and the speed-conditioned motion part switched
            on: brings flows saved before them up to date in about a minute instead of a
            retraining (``config`` other than ``weight`` is then ignored).
    """

    model: Path
    config: PostureConfig = field(default_factory=PostureConfig)
    seed: int | None = None
    data: Path | None = None
    refit_stats: bool = False


@dataclass(frozen=True, slots=True)
class ForecastEvalRequest:
    """What to evaluate (``posewatch forecast-eval``; defaults are the command line's).

    Attributes:
        model: checkpoint.
        data: dataset folder.
        split: split whose normal windows are evaluated.
        samples: K futures per window.
        stride: distance between window starts, kept frames.
        out: JSON file for the results (None: none written).
        samplers: only these sampler names (``default`` = the checkpoint's own); empty:
            every sampler of :func:`forecasting.samplers.default_samplers`.
        seed: sampling seed.
        progress: show a progress bar (stderr).
    """

    model: Path
    data: Path
    split: str = "test"
    samples: int = 20
    stride: int = 4
    out: Path | None = None
    samplers: tuple[str, ...] = ()
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "samplers", tuple(self.samplers))


def run_training(req: TrainRequest) -> Path:
    """Train on one split, validate on held-out clips, save checkpoint + loss curve.

    With ``req.members`` > 1, that many models are trained (seeds ``seed * members + r``)
    and saved as one ensemble; with ``req.posture_flows`` > 0 that many posture flows are
    added (seeds ``seed * posture_flows + f``, :func:`run_posture`).

    Returns:
        ``req.out``, the checkpoint written.

    Raises:
        ValueError: bad settings, or no windows to train on.
        detector.datasets.DatasetError: ``req.data`` is not a pose dataset.
    """
    wcfg = WindowConfig(t_obs=req.t_obs, horizon=req.horizon, frame_step=req.frame_step)
    tcfg = TrainConfig(
        epochs=req.epochs,
        seed=req.seed,
        normal_only=req.normal_only,
        device=req.device,
        max_minutes=req.max_minutes,
        split_seed=req.split_seed,
        stride=2 if req.frame_step == 1 else 1,
        members=req.members,
        roll=req.roll,
        yaw=req.yaw,
        pitch=req.pitch,
    )
    mcfg = ModelConfig(t_obs=req.t_obs, horizon=req.horizon)
    tr, va, val_clips = _windows(req.data, req.split, wcfg, tcfg)
    result = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=req.progress)
    path = save_checkpoint(
        req.out,
        result.model,
        wcfg,
        tcfg,
        result.history,
        extra={
            "validation_clips": sorted(val_clips),
            "training_data": str(req.data),
            "split": req.split,
            "ensemble_members": result.members,
            "fps": req.fps,
        },
    )
    png = plot_loss_curve(result.history, req.out.with_suffix(".loss.png"))
    if len(result.members) > 1:
        runs = ", ".join(f"seed {r['seed']:.0f}: {r['val_nll']:.4f}" for r in result.members)
        log.info(f"validation NLL of the ensemble members: {runs}")
    log.info(
        f"trained {count_parameters(result.model):,} parameters in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch or '-'}, validation NLL {result.best_val_nll:.4f} nats/dim"
    )
    log.info(f"checkpoint: {path}")
    log.info(f"loss curve: {png}")
    if req.posture_flows > 0:
        run_posture(
            PostureRequest(path, PostureConfig(flows=req.posture_flows), req.seed, req.data)
        )
    return path


def _windows(
    data: Path, split: str, wcfg: WindowConfig, tcfg: TrainConfig
) -> tuple[Windows, Windows, set[str]]:
    """Training and validation windows of a split (validation = held-out clips)."""
    tracks = load_tracks(data, split)
    train_clips, val_clips = split_clips(
        [t.clip for t in tracks], tcfg.val_fraction, tcfg.split_seed
    )
    tr, va = (
        build_windows([t for t in tracks if t.clip in c], wcfg, tcfg.stride, tcfg.normal_only)
        for c in (train_clips, val_clips)
    )
    train_tracks = [t for t in tracks if t.clip in train_clips]
    where = f"training windows in {data}/pose/{split}"
    require_windows(tr, train_tracks, wcfg, tcfg.normal_only, where)
    log.info(
        f"windows: {len(tr):,} train ({len(train_clips)} clips), {len(va):,} validation "
        f"({len(val_clips)} clips: {', '.join(sorted(val_clips))})"
    )
    return tr, va, val_clips


def _train_config(ckpt: Checkpoint, what: str, data: Path | None = None) -> TrainConfig:
    """The checkpoint's training settings (fields of other code versions are dropped).

    Arguments:
        ckpt: the checkpoint.
        what: what needs them, for the message (e.g. ``posewatch posture``).
        data: the dataset given instead of the checkpoint's own (``--data``), or None.

    Raises:
        ValueError: a checkpoint without them (``train_config`` is None when
            :func:`~forecasting.checkpoint.save_checkpoint` was given none), or without the
            split, validation clips or (``data`` None) training data it was trained on.
    """
    meta = ckpt.meta
    raw = meta.get("train_config")
    need = ["split", "validation_clips", *(["training_data"] if data is None else [])]
    missing = [k for k in need if meta.get(k) is None]
    if not isinstance(raw, dict) or missing:
        lacks = "train_config" if not isinstance(raw, dict) else ", ".join(missing)
        raise ValueError(
            f"{ckpt.path or 'checkpoint'}: has no training settings ({lacks}); {what} needs "
            "them to rebuild the checkpoint's own training and validation windows: use a "
            "checkpoint written by `posewatch train` (or train one with it)"
        )
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})


#: Checkpoint fields ensemble members must agree on.
_SHARED = ("model_config", "window_config", "standardizer", "split", "validation_clips")


def _shared(ck: Checkpoint, key: str) -> Any:
    """What a member must share with the others: its header's ``key`` (its rate for fps)."""
    return ck.fps if key == "fps" else ck.meta.get(key)


def run_ensemble(req: EnsembleRequest) -> Path:
    """Join separately trained checkpoints into one ensemble checkpoint.

    The members must come from the same data and settings with different seeds (e.g. trained
    in parallel); the result is what ``posewatch train --members N`` writes for members with
    seeds ``seed * N + r``: the error scale is refitted on the validation windows.

    Returns:
        ``req.out``, the ensemble checkpoint written (its loss curve beside it).

    Raises:
        ValueError: fewer than two members, a member that is already an ensemble, members
            of different data or settings (naming the field), a member without its
            training settings (``train_config``) or history, or data whose validation
            clips are not the members'.
        FileNotFoundError: a member checkpoint that does not exist.
    """
    if len(req.models) < 2:
        raise ValueError("an ensemble needs at least two member checkpoints (--model, repeated)")
    cks = [load_checkpoint(p) for p in req.models]
    first = cks[0]
    for ck in cks:
        if not isinstance(ck.model, GRUNF):
            raise ValueError(f"{ck.path}: already an ensemble; give its single-model members")
        for key in (*_SHARED, "fps"):  # fps as read: a checkpoint without one is 30 fps
            if _shared(ck, key) != _shared(first, key):
                raise ValueError(
                    f"{ck.path}: {key} differs from {first.path}'s; ensemble members must be "
                    "trained on the same data with the same settings (only the seed differs)"
                )
    tcfg, *_ = [_train_config(ck, "`posewatch ensemble`", req.data) for ck in cks]  # all
    runs, history = _member_histories(cks)
    data = Path(first.meta["training_data"]) if req.data is None else req.data
    tr, va, val_clips = _windows(data, first.meta["split"], first.window_config, tcfg)
    if sorted(val_clips) != first.meta.get("validation_clips"):
        raise ValueError(f"{data}: its validation clips are not the members'; wrong --data?")
    members = [ck.model for ck in cks if isinstance(ck.model, GRUNF)]
    ens, val_nll = make_ensemble(members, tr, va, tcfg.seed // len(members))
    path = save_checkpoint(
        req.out,
        ens,
        first.window_config,
        replace(tcfg, members=len(members)),
        history,
        extra={
            "validation_clips": first.meta["validation_clips"],
            "training_data": str(data),
            "split": first.meta["split"],
            "ensemble_members": runs,
            "fps": first.fps,
        },
    )
    plot_loss_curve(history, req.out.with_suffix(".loss.png"))
    log.info(f"ensemble of {len(members)}: validation NLL {val_nll:.4f} nats/dim -> {path}")
    log.warning(
        f"{path} has no posture flows: it is scored by minhde until `posewatch posture --model "
        f"{path}` adds the flows of the default scorer (fused)"
    )
    return path


def _member_histories(
    cks: list[Checkpoint],
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Per member its seed and best epoch (``ensemble_members``), and every member's
    training history tagged with its index (``member``)."""
    runs: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    for i, ck in enumerate(cks):
        hist = ck.meta.get("history") or []
        if not hist:
            raise ValueError(
                f"{ck.path}: has no training history; an ensemble member must be a "
                "checkpoint written by `posewatch train`"
            )
        best = min(hist, key=lambda h: h["val_nll"])
        seed = float(ck.meta["train_config"]["seed"])
        runs.append({"seed": seed, "val_nll": best["val_nll"], "best_epoch": best["epoch"]})
        history.extend({**h, "member": i} for h in hist)
    return runs, history


def forecast_samplers(names: tuple[str, ...], ckpt: Checkpoint) -> list[SamplerConfig]:
    """The samplers called ``names`` for the checkpoint's model (when empty, every sampler of
    :func:`forecasting.samplers.default_samplers` and the checkpoint's own, the one it is
    served with; duplicates dropped), built for the model's flow layer count (a cold-start
    model has fewer layers than a trained one).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    layers = ckpt.model.flow.num_layers
    if not names:
        every = default_samplers(layers)
        own = ckpt.sampler
        return every if own.name in {s.name for s in every} else [*every, own]
    out: dict[str, SamplerConfig] = {}
    for name in names:
        s = sampler_by_name(name, layers, ckpt.sampler)
        out.setdefault(s.name, s)
    return list(out.values())


def run_forecast_eval(req: ForecastEvalRequest) -> list[dict[str, object]]:
    """Forecast metrics of every sampler on the normal windows of one split (minADE@K,
    minFDE@K, ADE of the mean, APD, energy score, NLL, acceptance, effective sample size);
    logs the table and writes ``req.out`` (JSON) when given.

    Returns:
        One dict per sampler (:func:`forecasting.evaluate.rows_as_dicts`).

    Raises:
        ValueError: an unknown sampler name.
        FileNotFoundError: no such checkpoint.
        detector.datasets.DatasetError: ``req.data`` is not a pose dataset.
    """
    ckpt = load_checkpoint(req.model)
    samplers = forecast_samplers(req.samplers, ckpt)
    tracks = load_tracks(req.data, req.split)
    w = build_windows(tracks, ckpt.window_config, req.stride, normal_only=True)
    log.info(f"{len(w):,} normal windows of {req.split} (stride {req.stride}), K = {req.samples}")
    rows = evaluate_forecasts(
        ckpt.model, w, samplers, req.samples, seed=req.seed, progress=req.progress
    )
    log.info(format_table(rows))
    result = rows_as_dicts(rows)
    if req.out is not None:
        req.out.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "model": str(req.model),
            "data": str(req.data),
            "split": req.split,
            "K": req.samples,
            "stride": req.stride,
            "samplers": {s.name: s.to_dict() for s in samplers},
            "rows": result,
        }
        req.out.write_text(json.dumps(payload, indent=2))
        log.info(f"wrote {req.out}")
    return result


def run_posture(req: PostureRequest) -> Path:
    """Train posture flows for a checkpoint on its own training windows and add them to it
    (the ``posture`` and ``fused`` scorers need them).

    Returns:
        ``req.model``, rewritten in place with the flows.

    Raises:
        ValueError: a checkpoint without its training settings (``train_config``, split,
            validation clips), or data whose validation clips are not the checkpoint's.
        FileNotFoundError: no such checkpoint.
    """
    ckpt = load_checkpoint(req.model)
    tcfg = _train_config(ckpt, "`posewatch posture`", req.data)
    data = Path(ckpt.meta["training_data"]) if req.data is None else req.data
    tr, va, val_clips = _windows(data, ckpt.meta["split"], ckpt.window_config, tcfg)
    if sorted(val_clips) != ckpt.meta.get("validation_clips"):
        raise ValueError(f"{data}: its validation clips are not the checkpoint's; wrong --data?")
    seed = tcfg.seed if req.seed is None else req.seed
    if req.refit_stats:
        posture = posture_of(ckpt.model)
        if posture is None:
            raise ValueError(
                f"{req.model} has no posture flows to refit; add them with `posewatch posture` "
                "without --refit-stats"
            )
        posture = with_fused_terms(posture, req.config.weight)
        fit_fused_stats(ckpt.model, posture, va if len(va) >= 2 else tr, seed)
        attach_posture(req.model, posture)
        log.info(f"normal statistics of {posture.cfg.flows} posture flows refitted in {req.model}")
        return req.model
    cfg = req.config
    posture = fit_posture(ckpt.model, tr, va, cfg, seed, FLIP_INDEX, log=log.info)
    attach_posture(req.model, posture)
    log.info(
        f"{cfg.flows} posture flows ({count_parameters(posture):,} parameters) added to {req.model}"
    )
    return req.model


__all__ = [
    "EnsembleRequest",
    "ForecastEvalRequest",
    "PostureRequest",
    "TrainRequest",
    "forecast_samplers",
    "run_ensemble",
    "run_forecast_eval",
    "run_posture",
    "run_training",
]
