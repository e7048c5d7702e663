"""What ``posewatch train`` and ``posewatch forecast-eval`` do."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import typer

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import attach_posture, load_checkpoint, save_checkpoint
from forecasting.evaluate import default_samplers, evaluate_forecasts, format_table, rows_as_dicts
from forecasting.posture import PostureConfig
from forecasting.torch_model import GRUNF, ModelConfig, count_parameters
from forecasting.train import (
    TrainConfig,
    build_windows,
    fit_posture,
    make_ensemble,
    split_clips,
    train,
)
from forecasting.windows import WindowConfig, Windows
from pipelines.plots import plot_loss_curve
from pipelines.tracks import load_tracks


def run_training(
    data: Path,
    split: str,
    out: Path,
    normal_only: bool,
    epochs: int,
    seed: int,
    t_obs: int,
    horizon: int,
    frame_step: int,
    device: str,
    max_minutes: float,
    split_seed: int = 0,
    members: int = 1,
    posture_flows: int = 0,
) -> Path:
    """Train on one split, validate on held-out clips, save checkpoint + loss curve.

    With ``members`` > 1, that many models are trained (seeds ``seed * members + r``) and
    saved as one ensemble; with ``posture_flows`` > 0 that many posture flows are added
    (seeds ``seed * posture_flows + f``, :func:`run_posture`).
    """
    wcfg = WindowConfig(t_obs=t_obs, horizon=horizon, frame_step=frame_step)
    tcfg = TrainConfig(
        epochs=epochs,
        seed=seed,
        normal_only=normal_only,
        device=device,
        max_minutes=max_minutes,
        split_seed=split_seed,
        stride=2 if frame_step == 1 else 1,
        members=members,
    )
    mcfg = ModelConfig(t_obs=t_obs, horizon=horizon)
    tr, va, val_clips = _windows(data, split, wcfg, tcfg)
    result = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=True)
    path = save_checkpoint(
        out,
        result.model,
        wcfg,
        tcfg,
        result.history,
        extra={
            "validation_clips": sorted(val_clips),
            "training_data": str(data),
            "split": split,
            "ensemble_members": result.members,
        },
    )
    png = plot_loss_curve(result.history, out.with_suffix(".loss.png"))
    if len(result.members) > 1:
        runs = ", ".join(f"seed {r['seed']:.0f}: {r['val_nll']:.4f}" for r in result.members)
        typer.echo(f"validation NLL of the ensemble members: {runs}")
    typer.echo(
        f"trained {count_parameters(result.model):,} parameters in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch or '-'}, validation NLL {result.best_val_nll:.4f} nats/dim"
    )
    typer.echo(f"checkpoint: {path}")
    typer.echo(f"loss curve: {png}")
    if posture_flows > 0:
        run_posture(path, PostureConfig(flows=posture_flows), seed, data)
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
    typer.echo(
        f"windows: {len(tr):,} train ({len(train_clips)} clips), {len(va):,} validation "
        f"({len(val_clips)} clips: {', '.join(sorted(val_clips))})"
    )
    return tr, va, val_clips


#: Checkpoint fields ensemble members must agree on.
_SHARED = ("model_config", "window_config", "standardizer", "split", "validation_clips")


def run_ensemble(models: list[Path], out: Path, data: Path | None = None) -> Path:
    """Join separately trained checkpoints into one ensemble checkpoint.

    The members must come from the same data and settings with different seeds (e.g. trained
    in parallel); the result is what ``posewatch train --members N`` writes for members with
    seeds ``seed * N + r``: the error scale is refitted on the validation windows.

    Arguments:
        models: member checkpoints (single models, at least two).
        out: ensemble checkpoint to write.
        data: dataset folder (default: the one recorded in the first checkpoint).
    """
    if len(models) < 2:
        raise ValueError("an ensemble needs at least two member checkpoints (--model, repeated)")
    cks = [load_checkpoint(p) for p in models]
    first = cks[0]
    for ck in cks:
        if not isinstance(ck.model, GRUNF):
            raise ValueError(f"{ck.path}: already an ensemble; give its single-model members")
        for key in _SHARED:
            if ck.meta.get(key) != first.meta.get(key):
                raise ValueError(
                    f"{ck.path}: {key} differs from {first.path}'s; ensemble members must be "
                    "trained on the same data with the same settings (only the seed differs)"
                )
    known = {f.name for f in fields(TrainConfig)}  # checkpoints of other versions
    tcfg = TrainConfig(**{k: v for k, v in first.meta["train_config"].items() if k in known})
    data = Path(first.meta["training_data"]) if data is None else data
    tr, va, val_clips = _windows(data, first.meta["split"], first.window_config, tcfg)
    if sorted(val_clips) != first.meta.get("validation_clips"):
        raise ValueError(f"{data}: its validation clips are not the members'; wrong --data?")
    members = [ck.model for ck in cks if isinstance(ck.model, GRUNF)]
    ens, val_nll = make_ensemble(members, tr, va, tcfg.seed // len(members))
    runs: list[dict[str, float]] = []
    history: list[dict[str, float]] = []
    for i, ck in enumerate(cks):
        hist = ck.meta["history"]
        best = min(hist, key=lambda h: h["val_nll"])
        seed = float(ck.meta["train_config"]["seed"])
        runs.append({"seed": seed, "val_nll": best["val_nll"], "best_epoch": best["epoch"]})
        history.extend({**h, "member": i} for h in hist)
    path = save_checkpoint(
        out,
        ens,
        first.window_config,
        replace(tcfg, members=len(members)),
        history,
        extra={
            "validation_clips": first.meta["validation_clips"],
            "training_data": str(data),
            "split": first.meta["split"],
            "ensemble_members": runs,
        },
    )
    plot_loss_curve(history, out.with_suffix(".loss.png"))
    typer.echo(f"ensemble of {len(members)}: validation NLL {val_nll:.4f} nats/dim -> {path}")
    return path


def run_forecast_eval(
    model_path: Path,
    data: Path,
    split: str,
    samples: int,
    stride: int,
    out: Path | None,
    only: list[str] | None,
    seed: int,
) -> list[dict[str, object]]:
    """Evaluate every sampler on the normal windows of one split; print and write JSON."""
    ckpt = load_checkpoint(model_path)
    tracks = load_tracks(data, split)
    w = build_windows(tracks, ckpt.window_config, stride, normal_only=True)
    samplers = default_samplers()
    if only:
        samplers = [s for s in samplers if s.name in only]
        if not samplers:
            names = ", ".join(s.name for s in default_samplers())
            raise ValueError(f"no sampler named {only}; choose from {names}")
    typer.echo(f"{len(w):,} normal windows of {split} (stride {stride}), K = {samples}")
    rows = evaluate_forecasts(ckpt.model, w, samplers, samples, seed=seed, progress=True)
    typer.echo(format_table(rows))
    result = rows_as_dicts(rows)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": str(model_path),
            "data": str(data),
            "split": split,
            "K": samples,
            "stride": stride,
            "samplers": {s.name: s.to_dict() for s in samplers},
            "rows": result,
        }
        out.write_text(json.dumps(payload, indent=2))
        typer.echo(f"wrote {out}")
    return result


def run_posture(
    model_path: Path, cfg: PostureConfig, seed: int | None = None, data: Path | None = None
) -> Path:
    """Train posture flows for a checkpoint on its own training windows and add them to it
    (the ``posture`` and ``fused`` scorers need them).

    Arguments:
        model_path: checkpoint written by ``posewatch train`` (rewritten in place).
        cfg: posture settings.
        seed: flow seeds ``seed * flows + f`` (default: the checkpoint's training seed).
        data: dataset folder (default: the one recorded in the checkpoint).
    """
    ckpt = load_checkpoint(model_path)
    known = {f.name for f in fields(TrainConfig)}
    tcfg = TrainConfig(**{k: v for k, v in ckpt.meta["train_config"].items() if k in known})
    data = Path(ckpt.meta["training_data"]) if data is None else data
    tr, va, val_clips = _windows(data, ckpt.meta["split"], ckpt.window_config, tcfg)
    if sorted(val_clips) != ckpt.meta.get("validation_clips"):
        raise ValueError(f"{data}: its validation clips are not the checkpoint's; wrong --data?")
    seed = tcfg.seed if seed is None else seed
    posture = fit_posture(ckpt.model, tr, va, cfg, seed, FLIP_INDEX, log=typer.echo)
    attach_posture(model_path, posture)
    typer.echo(
        f"{cfg.flows} posture flows ({count_parameters(posture):,} parameters) added to {model_path}"
    )
    return model_path
