"""What ``posewatch train`` and ``posewatch forecast-eval`` do."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from detector.skeleton import FLIP_INDEX
from forecasting.evaluate import default_samplers, evaluate_forecasts, format_table, rows_as_dicts
from forecasting.torch_model import ModelConfig, count_parameters
from forecasting.train import (
    TrainConfig,
    build_windows,
    load_checkpoint,
    save_checkpoint,
    split_clips,
    train,
)
from forecasting.windows import WindowConfig
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
) -> Path:
    """Train on one split, validate on held-out clips, save checkpoint + loss curve."""
    wcfg = WindowConfig(t_obs=t_obs, horizon=horizon, frame_step=frame_step)
    tcfg = TrainConfig(
        epochs=epochs,
        seed=seed,
        normal_only=normal_only,
        device=device,
        max_minutes=max_minutes,
        split_seed=split_seed,
        stride=2 if frame_step == 1 else 1,
    )
    mcfg = ModelConfig(t_obs=t_obs, horizon=horizon)
    tracks = load_tracks(data, split)
    train_clips, val_clips = split_clips(
        [t.clip for t in tracks], tcfg.val_fraction, tcfg.split_seed
    )
    tr = build_windows([t for t in tracks if t.clip in train_clips], wcfg, tcfg.stride, normal_only)
    va = build_windows([t for t in tracks if t.clip in val_clips], wcfg, tcfg.stride, normal_only)
    typer.echo(
        f"windows: {len(tr):,} train ({len(train_clips)} clips), {len(va):,} validation "
        f"({len(val_clips)} clips: {', '.join(sorted(val_clips))})"
    )
    result = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=True)
    path = save_checkpoint(
        out,
        result.model,
        wcfg,
        tcfg,
        result.history,
        extra={"validation_clips": sorted(val_clips), "training_data": str(data), "split": split},
    )
    png = plot_loss_curve(result.history, out.with_suffix(".loss.png"))
    typer.echo(
        f"trained {count_parameters(result.model):,} parameters in {result.seconds:.0f} s; "
        f"best epoch {result.best_epoch}, validation NLL {result.best_val_nll:.4f} nats/dim"
    )
    typer.echo(f"checkpoint: {path}")
    typer.echo(f"loss curve: {png}")
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
