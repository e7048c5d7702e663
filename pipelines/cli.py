"""The ``posewatch`` command line (typer)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from detector.datasets import DatasetError, load_split, splits, summarize
from detector.pose_model import BACKENDS
from detector.posefiles import PoseFileError
from detector.tracking import TRACKERS
from forecasting.defaults import (
    AUTO,
    DEFAULT_MEMBERS,
    DEFAULT_SAMPLER,
    DEFAULT_SAMPLES,
    DEFAULT_SCORER,
    FALLBACK_SCORER,
    MODEL_FPS,
    POSTURE_EPOCHS,
    POSTURE_FLOWS,
    POSTURE_UPRIGHT,
    POSTURE_UPRIGHT_FRAMES,
    POSTURE_WEIGHT,
    POSTURE_YAW,
    SCORERS,
)
from pipelines import __version__

app = typer.Typer(
    name="posewatch",
    help="Pose-based video anomaly detection: cameras in, alerts out.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect pose datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
config_app = typer.Typer(help="Check the service configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _or(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


class _EchoHandler(logging.Handler):
    """Prints each record's message as a plain line with ``typer.echo`` (stdout looked up at
    each record, so typer's test runner captures it; warnings and errors to stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            typer.echo(record.getMessage(), err=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)


def _offline_logging() -> None:
    """Print the offline commands' messages (loggers under ``pipelines.offline``, INFO and
    up) as plain lines; installed once."""
    logger = logging.getLogger("pipelines.offline")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


#: Help of the sampler options (the names need torch to list; an unknown name lists them).
_SAMPLER_HELP = (
    f"{DEFAULT_SAMPLER} (the checkpoint's own: GRU-SNF at temperature 0.8 for a model trained now), gru-nf, "
    "gru-snf, or any sampler of `posewatch forecast-eval` (an unknown name lists them all)"
)

#: Help of ``--fps`` of the commands that score a dataset.
_FPS_HELP = (
    "Frame rate of the dataset, frames/s (default: the model's, its checkpoint's fps). Footage "
    "at another rate is scored on the model's time axis, as the service scores such a camera."
)

_YAW_HELP = (
    "Training augmentation, degrees: each training window's horizontal coordinates scaled by "
    "cos(theta), theta uniform in [0, YAW], every epoch (a body turned side-on to the camera; "
    "0: off). See docs/DECISIONS.md, session 20."
)
_TRAIN_FPS_HELP = (
    "Frame rate of the dataset, frames/s (recorded in the checkpoint: cameras at another rate "
    "are scored on this time axis)."
)


@app.command()
def version() -> None:
    """Print the posewatch version."""
    typer.echo(__version__)


@data_app.command("summary")
def data_summary(
    path: Annotated[Path, typer.Argument(help="Dataset folder holding pose/<split>/ and gt/.")],
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Only these splits (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per split: clips, person tracks, person-frames, label frames, anomalous fraction."""
    try:
        names = split or splits(path)
        rows = [summarize(s, load_split(path, s)) for s in names]
    except (DatasetError, PoseFileError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps({r.split: asdict(r) for r in rows}, indent=2))
        return
    header = f"{'split':<8}{'clips':>7}{'tracks':>8}{'person-frames':>15}{'label frames':>14}"
    header += f"{'anomalous':>11}"
    typer.echo(header)
    for r in rows:
        typer.echo(
            f"{r.split:<8}{r.clips:>7,}{r.tracks:>8,}{r.person_frames:>15,}{r.label_frames:>14,}"
            f"{r.anomalous_fraction:>10.1%}"
        )


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (pose/<split>/ + gt/).")],
    out: Annotated[Path, typer.Option(help="Checkpoint file to write (.pt).")],
    split: Annotated[str, typer.Option(help="Split to train on.")] = "train",
    normal_only: Annotated[
        bool, typer.Option("--normal-only/--all-windows", help="Train on all-normal windows only.")
    ] = True,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed (deterministic on CPU).")] = 0,
    t_obs: Annotated[int, typer.Option(min=1, help="Observed frames per window.")] = 12,
    horizon: Annotated[int, typer.Option(min=1, help="Future frames per window.")] = 12,
    frame_step: Annotated[int, typer.Option(min=1, help="Keep every n-th frame.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    max_minutes: Annotated[float, typer.Option(help="Stop training after this long.")] = 18.0,
    split_seed: Annotated[
        int, typer.Option(help="Seed of the train/validation clip split (fixed across seeds).")
    ] = 0,
    members: Annotated[
        int,
        typer.Option(
            min=1,
            help="Ensemble members (seeds seed*N+r); sampling splits K across them.",
        ),
    ] = DEFAULT_MEMBERS,
    posture_flows: Annotated[
        int,
        typer.Option(
            min=0,
            help="Posture flows added after training, for the default (fused) scorer; 0 "
            "adds none (the checkpoint is then scored by minhde; `posewatch posture` adds "
            "them later).",
        ),
    ] = POSTURE_FLOWS,
    fps: Annotated[
        float,
        typer.Option(min=0.1, max=1000.0, help=_TRAIN_FPS_HELP),
    ] = MODEL_FPS,
    roll: Annotated[
        float, typer.Option(min=0.0, max=90.0, help="View augmentation: roll up to +-DEG.")
    ] = 0.0,
    yaw: Annotated[
        float,
        typer.Option(min=0.0, max=89.0, help="View augmentation: width scaled by cos(U(0, DEG))."),
    ] = 0.0,
    pitch: Annotated[
        float,
        typer.Option(min=0.0, max=89.0, help="View augmentation: height scaled by cos(U(0, DEG))."),
    ] = 0.0,
) -> None:
    """Train a GRU-NF forecaster (and its posture flows); writes the checkpoint and a
    loss-curve PNG beside it."""
    from pipelines.offline.training import TrainRequest, run_training

    _offline_logging()
    try:
        run_training(
            TrainRequest(
                data=data,
                out=out,
                split=split,
                normal_only=normal_only,
                epochs=epochs,
                seed=seed,
                t_obs=t_obs,
                horizon=horizon,
                frame_step=frame_step,
                device=device,
                max_minutes=max_minutes,
                split_seed=split_seed,
                members=members,
                posture_flows=posture_flows,
                fps=fps,
                roll=roll,
                yaw=yaw,
                pitch=pitch,
            )
        )
    except (DatasetError, PoseFileError, ValueError) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def ensemble(
    model: Annotated[
        list[Path], typer.Option(help="Member checkpoint (repeat; same data and settings).")
    ],
    out: Annotated[Path, typer.Option(help="Ensemble checkpoint to write (.pt).")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: the members' training data).")
    ] = None,
) -> None:
    """Join models trained separately (e.g. in parallel, different seeds) into one ensemble."""
    from pipelines.offline.training import EnsembleRequest, run_ensemble

    _offline_logging()
    try:
        run_ensemble(EnsembleRequest(tuple(model), out, data))
    except (DatasetError, PoseFileError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def posture(
    model: Annotated[Path, typer.Option(help="Checkpoint to add posture flows to (in place).")],
    flows: Annotated[int, typer.Option(min=1, help="Flows trained and averaged.")] = POSTURE_FLOWS,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per flow.")] = POSTURE_EPOCHS,
    weight: Annotated[
        float, typer.Option(help="Weight of the posture score in the fused score.")
    ] = POSTURE_WEIGHT,
    seed: Annotated[
        int | None, typer.Option(help="Flow seeds seed*flows+f (default: the training seed).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (default: the checkpoint's training data).")
    ] = None,
    upright: Annotated[
        float,
        typer.Option(
            min=0,
            max=90,
            help="Turn each window's body axis upright by at most this many degrees before the "
            "flows (undoes a camera's roll or perspective lean; 0: off). See docs/DECISIONS.md, "
            "session 12.",
        ),
    ] = POSTURE_UPRIGHT,
    upright_frames: Annotated[
        int,
        typer.Option(
            min=0,
            help="Measure the body axis --upright turns over the first N frames the flows see "
            "(0: all; 12: a default window's observed part).",
        ),
    ] = POSTURE_UPRIGHT_FRAMES,
    yaw: Annotated[float, typer.Option(min=0, max=80, help=_YAW_HELP)] = POSTURE_YAW,
    refit_stats: Annotated[
        bool,
        typer.Option(
            help="Keep the checkpoint's flows; refit only the fused score's normal statistics "
            "with the stillness term and the speed-conditioned motion part on (about a minute; "
            "for flows saved before them). "
            "The flow settings (--flows, --epochs, --upright, --upright-frames, --yaw) are then "
            "ignored."
        ),
    ] = False,
) -> None:
    """Train posture flows on the checkpoint's normal training windows and add them to it
    (the posture and fused scorers need them)."""
    from forecasting.posture import PostureConfig
    from pipelines.offline.training import PostureRequest, run_posture

    _offline_logging()
    try:
        cfg = PostureConfig(
            flows=flows,
            epochs=epochs,
            weight=weight,
            upright=upright,
            upright_frames=upright_frames,
            yaw=yaw,
        )
        run_posture(PostureRequest(model, cfg, seed, data, refit_stats))
    except (DatasetError, PoseFileError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc


@app.command("forecast-eval")
def forecast_eval(
    model: Annotated[Path, typer.Option(help="Checkpoint from `posewatch train`.")],
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    split: Annotated[str, typer.Option(help="Split to evaluate (normal windows only).")] = "test",
    samples: Annotated[int, typer.Option("-k", "--samples", help="K futures per window.")] = 20,
    stride: Annotated[int, typer.Option(help="Distance between window starts.")] = 4,
    out: Annotated[Path | None, typer.Option(help="JSON file for the results.")] = None,
    sampler: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these samplers (repeatable; default: all): {_SAMPLER_HELP}."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Forecast metrics (minADE/minFDE@K, ADE of mean, APD, energy, NLL) per sampler."""
    from pipelines.offline.training import ForecastEvalRequest, run_forecast_eval

    _offline_logging()
    try:
        run_forecast_eval(
            ForecastEvalRequest(
                model=model,
                data=data,
                split=split,
                samples=samples,
                stride=stride,
                out=out,
                samplers=tuple(sampler or ()),
                seed=seed,
            )
        )
    except (DatasetError, PoseFileError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Checkpoint from `posewatch train`.")],
    data: Annotated[Path, typer.Option(help="Labelled dataset folder (AIHub2 or STG-NF layout).")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    scorer: Annotated[
        list[str] | None,
        typer.Option(
            help=f"auto, {', '.join(SCORERS)} (repeatable; default: every one the checkpoint "
            "supports)."
        ),
    ] = None,
    sampler: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Samplers of the sample-based scorers (repeatable; default: gru-nf and "
            f"{DEFAULT_SAMPLER}): {_SAMPLER_HELP}."
        ),
    ] = None,
    stride: Annotated[int, typer.Option(help="Score every n-th frame of each track.")] = 1,
    sigma: Annotated[float, typer.Option(help="Offline (symmetric) smoothing, frames.")] = 9.5,
    causal_sigma: Annotated[float, typer.Option(help="Causal smoothing, frames.")] = 6.0,
    fps: Annotated[float | None, typer.Option(min=0.1, max=1000.0, help=_FPS_HELP)] = None,
    samples: Annotated[
        int, typer.Option("-k", "--samples", help="K futures per window.")
    ] = DEFAULT_SAMPLES,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder (JSON, ROC, timelines).")] = Path(
        "runs/evaluate"
    ),
    labelled_only: Annotated[
        bool,
        typer.Option(
            "--labelled-only",
            help="Score each clip only up to its last labelled frame (default: labels "
            "shorter than a clip's poses are an error).",
        ),
    ] = False,
) -> None:
    """Frame AUC-ROC, AP, per-clip AUC and recall at 1 and 5 false alerts per camera-hour."""
    from pipelines.offline.evaluation import EvaluateRequest, run_evaluate

    _offline_logging()
    try:
        req = EvaluateRequest(
            model=model,
            data=data,
            split=split,
            scorers=tuple(scorer) if scorer else None,
            stride=stride,
            sigma=sigma,
            causal_sigma=causal_sigma,
            fps=fps,
            samples=samples,
            seed=seed,
            out=out,
            labelled_only=labelled_only,
        )
        run_evaluate(replace(req, samplers=tuple(sampler)) if sampler else req)
    except (DatasetError, PoseFileError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc


_CALIBRATE_DATA_HELP = (
    "The dataset the model was trained on (with --all-clips: a folder of the camera's pose "
    "files, DATA/pose/SPLIT/*.json)."
)
_CALIBRATE_SPLIT_HELP = (
    "Split holding the checkpoint's validation clips (with --all-clips: the camera's footage)."
)
_MIN_DURATION_HELP = (
    "Frames an alert must last (default: alerting.min_duration_s, 0.5 s, at --fps)."
)
_ALL_CLIPS_HELP = (
    "Fit on every clip of --split: pose files of the camera the model will serve (`posewatch "
    "extract` writes them), not the checkpoint's validation clips. Labels are optional; "
    "unlabelled frames are taken as normal. With --feedback, give --camera too (else every "
    "camera's verdicts move this camera's threshold)."
)


@app.command()
def calibrate(
    model: Annotated[Path, typer.Option(help="Checkpoint to calibrate (updated in place).")],
    data: Annotated[Path, typer.Option(help=_CALIBRATE_DATA_HELP)],
    split: Annotated[str, typer.Option(help=_CALIBRATE_SPLIT_HELP)] = "train",
    target_rate: Annotated[
        float, typer.Option(help="False alerts per camera-hour the operator accepts.")
    ] = 1.0,
    scorer: Annotated[
        str,
        typer.Option(
            help=f"auto (= {DEFAULT_SCORER} with posture flows, {FALLBACK_SCORER} without: "
            f"what the service serves by default), {', '.join(SCORERS)}; posture and fused "
            "need posture flows (`posewatch train` adds them, `posewatch posture` later)."
        ),
    ] = AUTO,
    sampler: Annotated[
        str,
        typer.Option(
            help="Sampler; calibrate for the one the service serves (forecaster.sampler): "
            f"{_SAMPLER_HELP}."
        ),
    ] = DEFAULT_SAMPLER,
    causal_sigma: Annotated[float, typer.Option(help="Causal smoothing, frames.")] = 6.0,
    min_duration: Annotated[int | None, typer.Option(help=_MIN_DURATION_HELP)] = None,
    fps: Annotated[float | None, typer.Option(min=0.1, max=1000.0, help=_FPS_HELP)] = None,
    samples: Annotated[
        int, typer.Option("-k", "--samples", help="K futures per window.")
    ] = DEFAULT_SAMPLES,
    stride: Annotated[int, typer.Option(help="Score every n-th frame.")] = 1,
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="Alert store (outputs.store) whose operator verdicts refine the threshold: "
            "above the false alerts' peaks, below the confirmed ones'."
        ),
    ] = None,
    camera: Annotated[
        str | None, typer.Option(help="Use only this camera's verdicts (default: all).")
    ] = None,
    all_clips: Annotated[bool, typer.Option(help=_ALL_CLIPS_HELP)] = False,
) -> None:
    """Fit the alert threshold on normal validation footage for a target false-alert rate
    (and, with --feedback, the operators' verdicts). With --all-clips, on the footage of
    the camera the model will serve: a threshold fitted on another scene can be far off."""
    from pipelines.offline.evaluation import CalibrateRequest, run_calibrate

    _offline_logging()
    try:
        run_calibrate(
            CalibrateRequest(
                model=model,
                data=data,
                split=split,
                target_rate=target_rate,
                scorer=scorer,
                sampler=sampler,
                causal_sigma=causal_sigma,
                min_duration=min_duration,
                fps=fps,
                samples=samples,
                stride=stride,
                feedback=feedback,
                camera=camera,
                all_clips=all_clips,
            )
        )
    except (DatasetError, PoseFileError, ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc


@app.command()
def extract(
    videos: Annotated[list[Path], typer.Argument(help="Video files to turn into pose files.")],
    out: Annotated[Path, typer.Option(help="Output folder (one pose file per video).")] = Path(
        "poses"
    ),
    fmt: Annotated[str, typer.Option("--format", help="stgnf (STG-NF JSON) or jsonl.")] = "stgnf",
    weights: Annotated[
        str | None, typer.Option(help="Pose weights path or name (default yolo11n-pose).")
    ] = None,
    imgsz: Annotated[int | None, typer.Option(help="Inference image size (default 1088).")] = None,
    backend: Annotated[str, typer.Option(help=f"{_or(BACKENDS)}.")] = "auto",
    batch: Annotated[int, typer.Option(help="Frames per inference call.")] = 4,
    tracker: Annotated[str, typer.Option(help=f"{_or(TRACKERS)}.")] = "bytetrack",
    fps: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=999.0,
            help="Frame rate of the videos (frames/s) for the timestamps; default: each "
            "header's (an implausible one is replaced and logged).",
        ),
    ] = None,
) -> None:
    """Detect, track and write the poses of each video (STG-NF JSON or JSON lines).

    Exit status: 0 when every video was read to its end; 3 when one ended early and is
    truncated (its poses up to there are written); 1 when one could not be read at all
    (not found, not a video); 2 for bad options.
    """
    from detector.extract import extract_video
    from detector.pose_model import DEFAULT_IMGSZ, PoseModel
    from detector.sources import SourceError
    from detector.weights import WeightsNotFoundError

    if fmt not in ("stgnf", "jsonl"):
        raise _fail(f"--format must be stgnf or jsonl, got {fmt!r}", 2)
    if backend not in BACKENDS:
        raise _fail(f"--backend must be {_or(BACKENDS)}, got {backend!r}", 2)
    if tracker not in TRACKERS:
        raise _fail(f"--tracker must be {_or(TRACKERS)}, got {tracker!r}", 2)
    try:
        model = PoseModel(weights, imgsz or DEFAULT_IMGSZ, backend)  # type: ignore[arg-type]
    except WeightsNotFoundError as exc:
        raise _fail(str(exc)) from exc
    failed = incomplete = 0
    for video in videos:
        try:
            s = extract_video(model, video, out, fmt, batch, tracker=tracker, fps=fps)  # type: ignore[arg-type]
        except SourceError as exc:
            typer.echo(f"error: {exc}", err=True)
            failed += 1
            continue
        claimed = s.frames_claimed
        of = f" (of the {claimed} its header claims)" if claimed and claimed > s.frames else ""
        typer.echo(
            f"{video}: {s.frames} frames{of} in {s.seconds:.1f} s ({s.fps:.1f} frames/s, {model.backend}, "
            f"imgsz {model.imgsz}); {s.persons_per_frame:.2f} persons per frame; {s.tracks} tracks, "
            f"{s.long_tracks} longer than 200 frames -> {s.out}"
        )
        if s.incomplete:
            typer.echo(
                f"warning: {s.incomplete}; the poses of its {s.frames} frames are written", err=True
            )
            incomplete += 1
    if failed or incomplete:
        raise typer.Exit(1 if failed else 3)


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="YAML configuration file.")],
) -> None:
    """Validate a configuration file: every error with its field path (exit 2 when invalid)."""
    from pipelines.config import ConfigError, load_config

    try:
        cfg = load_config(file)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    ckpt = cfg.forecaster.checkpoint
    if ckpt is not None and not ckpt.is_file():
        typer.echo(
            f"{file}: 1 configuration error(s)\n  forecaster.checkpoint: {ckpt} "
            f"{'is not a file' if ckpt.exists() else 'does not exist'} (train one with "
            "`posewatch train`, or remove the setting to learn each scene: cold start)",
            err=True,
        )
        raise typer.Exit(2)
    enabled = [n for n, c in cfg.cameras.items() if c.enabled]
    typer.echo(
        f"{file}: valid ({len(cfg.cameras)} cameras, {len(enabled)} enabled: {', '.join(enabled)})"
    )


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the configuration."""
    from pipelines.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def run(
    config: Annotated[Path | None, typer.Option(help="YAML configuration file.")] = None,
    source: Annotated[
        str | None, typer.Option(help="Quick form: one video file or stream URL (camera 'cam0').")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="Checkpoint (quick form).")] = None,
    threshold: Annotated[float | None, typer.Option(help="Alert threshold override.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    max_frames: Annotated[
        int | None, typer.Option(help="Stop after this many frames (all cameras).")
    ] = None,
    log_level: _LogLevel = "INFO",
    log_format: _LogFormat = "text",
) -> None:
    """Run the service: cameras in, alerts to Kafka, JSONL and the alert store, metrics on
    /metrics, the web view on http://127.0.0.1:8108/ (ui section)."""

    from pipelines.config import ConfigError, load_config
    from pipelines.run_service import Service
    from pipelines.serving import RuntimeConfigError

    _service_logging(log_level, log_format)
    try:
        if config is not None:
            cfg = load_config(config)
        elif source is not None:
            data: dict[str, object] = {"cameras": {"cam0": {"source": source}}}
            if model is not None:
                data["forecaster"] = {"checkpoint": str(model)}
            cfg = load_config(data=data)
        else:
            raise _fail("give --config FILE or --source VIDEO_OR_URL", 2)
        if model is not None:
            cfg.forecaster.checkpoint = model
        if threshold is not None:
            cfg.alerting.threshold = threshold
        service = Service(cfg)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    except RuntimeConfigError as exc:
        raise _fail(str(exc), 2) from exc
    service.install_signal_handlers()
    s = _run(service, max_seconds, max_frames)
    frames = ", ".join(f"{c}: {n}" for c, n in s.frames.items()) or "none"
    alerts = ", ".join(f"{k} {v}" for k, v in sorted(s.alerts.items())) or "none"
    typer.echo(f"frames: {frames}; persons: {s.persons}; alerts: {alerts}; {s.seconds:.0f} s")
    if note := s.not_detected():
        typer.echo(note)
    typer.echo(f"alerts file: {s.alerts_file}; topic {s.topic} on {s.bootstrap}")
    if s.phases:
        typer.echo("model phase: " + ", ".join(f"{c}: {p}" for c, p in s.phases.items()))
    if s.videos:
        typer.echo(f"annotated video: {', '.join(s.videos)}")
    for cam, err in s.camera_errors.items():
        typer.echo(f"camera {cam}: {err}", err=True)
    if not s.delivered:
        typer.echo("some alerts are still in the spool; they are sent at the next start", err=True)


_LogLevel = Annotated[
    str,
    typer.Option(
        "--log-level",
        help="DEBUG, INFO, WARNING or ERROR (kafka-python's own lines: WARNING and up unless "
        "DEBUG).",
    ),
]
_LogFormat = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="text, or json: one JSON object per line (time, level, logger, message) for "
        "log shippers.",
    ),
]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _RedactingFilter(logging.Filter):
    """Every log record leaves with credentials and known secret values hidden
    (:func:`detector.redaction.redact`): its message, arguments and traceback, whichever
    library wrote it (kafka-python, OpenCV's FFmpeg messages through our sources, uvicorn)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from detector.redaction import redact

        try:
            msg = record.getMessage()
        except Exception:  # a record whose arguments do not fit its message
            msg = str(record.msg)
        record.msg, record.args = redact(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to the ``sys.stderr`` of the moment (a test runner may
    swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message`` (and ``exception`` with the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime

        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _service_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Logs to stderr at ``level`` as text or JSON lines; kafka-python's own INFO chatter
    (connection attempts, metadata) is kept out (WARNING and above shown, all at DEBUG):
    posewatch logs delivery problems itself, once; so is uvicorn's access log. Python
    warnings (a library's deprecation notice) are log records too (logger ``py.warnings``):
    with JSON logs every stderr line stays JSON, and secrets are redacted from them."""
    lvl = level.upper()
    if lvl not in LOG_LEVELS:
        raise _fail(f"--log-level must be {_or(LOG_LEVELS)}, got {level!r}", 2)
    if fmt not in ("text", "json"):
        raise _fail(f"--log-format must be text or json, got {fmt!r}", 2)
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.addFilter(_RedactingFilter())
        root.addHandler(handler)
    handler.setFormatter(
        JsonLogFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.setLevel(lvl)
    logging.captureWarnings(True)
    logging.getLogger("kafka").setLevel(logging.DEBUG if lvl == "DEBUG" else logging.WARNING)


def _run(service: Any, *args: Any) -> Any:
    """``service.run(*args)``; a start-up fault (metrics port in use, a spool folder held
    by another process, a broker that cannot start) is one line and exit 2."""
    from pipelines.serving import RuntimeConfigError

    try:
        return service.run(*args)
    except RuntimeConfigError as exc:
        raise _fail(str(exc), 2) from exc


def _start_service(
    factory: Callable[[Any], Any], config: Path, log_level: str = "INFO", log_format: str = "text"
) -> Any:
    """Logging, the configuration and the service; config errors exit 2 with field paths."""
    from pipelines.config import ConfigError, load_config
    from pipelines.serving import RuntimeConfigError

    _service_logging(log_level, log_format)
    try:
        service = factory(load_config(config))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    except RuntimeConfigError as exc:
        raise _fail(str(exc), 2) from exc
    service.install_signal_handlers()
    return service


@app.command()
def detect(
    config: Annotated[Path, typer.Option(help="YAML configuration file.")],
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    log_level: _LogLevel = "INFO",
    log_format: _LogFormat = "text",
) -> None:
    """Scale-out detector: cameras -> YOLO-pose -> tracking -> PoseFrames on the poses topic."""
    from pipelines.detect_service import DetectService

    service = _start_service(DetectService, config, log_level, log_format)
    s = _run(service, max_seconds, max_frames)
    frames = ", ".join(f"{c}: {n}" for c, n in s.frames.items()) or "none"
    typer.echo(
        f"frames: {frames}; persons: {s.persons}; poses published {s.published}, "
        f"dropped {s.dropped}; {s.seconds:.0f} s"
    )
    for cam, err in s.camera_errors.items():
        typer.echo(f"camera {cam}: {err}", err=True)


@app.command()
def score(
    config: Annotated[Path, typer.Option(help="YAML configuration file.")],
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    log_level: _LogLevel = "INFO",
    log_format: _LogFormat = "text",
) -> None:
    """Scale-out scorer: one consumer-group member; poses topic -> scores -> alerts."""
    from pipelines.score_service import ScoreService

    service = _start_service(ScoreService, config, log_level, log_format)
    s = _run(service, max_seconds)
    alerts = ", ".join(f"{k} {v}" for k, v in sorted(s.alerts.items())) or "none"
    typer.echo(
        f"messages: {s.messages} ({s.invalid} dead-lettered); windows scored: {s.windows}; "
        f"alerts: {alerts}; commits {s.commits}; rebalances {s.rebalances}; {s.seconds:.0f} s"
    )


def record_text(raw: bytes | None, null: str = "<null>") -> str:
    """A Kafka record's key or value as one printable line: UTF-8 text as is, any other
    byte as ``\\xNN`` (a dead letter need not be text), line breaks as ``\\n`` / ``\\r``,
    and ``null`` (``<null>``) for a record without one (a tombstone).

    Example:
        >>> record_text(b"\\xff\\xfe{}"), record_text(b""), record_text(None)
        ('\\\\xff\\\\xfe{}', '', '<null>')
    """
    if raw is None:
        return null
    text = bytes(raw).decode("utf-8", errors="backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n")


@app.command()
def consume(
    bootstrap: Annotated[str, typer.Option(help="Kafka bootstrap server host:port.")],
    topic: Annotated[str, typer.Option(help="Topic to read.")] = "posewatch.alerts",
    max_messages: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a message.")
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option(min=0.1, help="Give up when the broker does not answer this long (s).")
    ] = 30.0,
) -> None:
    """Print the records on a topic from its beginning, one `key<TAB>value` line each (the
    alerts: `camera<TAB>json`); bytes that are not UTF-8 (dead letters) are shown as \\xNN,
    a missing value as <null>."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    kafka_log = logging.getLogger("kafka")
    if not kafka_log.handlers:  # its reconnect warnings are not for this command's user
        kafka_log.addHandler(logging.NullHandler())
    try:
        c = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=int(idle_timeout * 1000) if idle_timeout else float("inf"),
            bootstrap_timeout_ms=int(connect_timeout * 1000),
        )
    except KafkaError as exc:
        raise _fail(
            f"cannot reach the Kafka broker at {bootstrap} within {connect_timeout:g} s "
            f"({type(exc).__name__}); check --bootstrap and that the broker runs",
            2,
        ) from exc
    except ValueError as exc:  # e.g. a port that is not a number
        raise _fail(f"--bootstrap {bootstrap!r}: {exc}; give host:port", 2) from exc
    n = 0
    try:
        for rec in c:
            typer.echo(f"{record_text(rec.key, null='')}\t{record_text(rec.value)}")
            n += 1
            if max_messages is not None and n >= max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        c.close()


@app.command()
def ui(
    config: Annotated[Path, typer.Option(help="YAML configuration file.")],
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this long.")] = None,
    log_level: _LogLevel = "INFO",
    log_format: _LogFormat = "text",
) -> None:
    """Split deployments: the web view of the alerts on the alerts topic (kafka section),
    kept in the alert store (outputs.store) with the operators' verdicts."""
    from pipelines.web.service import UiService

    service = _start_service(UiService, config, log_level, log_format)
    s = _run(service, max_seconds)
    typer.echo(f"alert messages: {s.messages} ({s.invalid} malformed); {s.seconds:.0f} s")


alerts_app = typer.Typer(
    help="The alert history (outputs.store): list, show, export, mark.", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")

_Store = Annotated[
    Path | None,
    typer.Option(
        "--store", help="Alert store file (default: outputs.store of --config, or runs/alerts.db)."
    ),
]
_Config = Annotated[
    Path | None, typer.Option("--config", help="Configuration whose outputs.store to read.")
]
_Camera = Annotated[str | None, typer.Option(help="Only this camera.")]
_Since = Annotated[
    str | None, typer.Option(help="First seen at or after: ISO 8601 (2026-11-30T14:05) or UNIX s.")
]
_Until = Annotated[str | None, typer.Option(help="First seen before (as --since).")]
_Verdict = Annotated[
    str | None, typer.Option(help="false_alert, confirmed, or none (no verdict yet).")
]


def _open_store(store: Path | None, config: Path | None) -> Any:
    """The alert store named by ``--store`` / ``--config`` (exit 2 when there is none)."""
    from pipelines.config import ConfigError, load_config
    from pipelines.sinks.store import AlertStore, StoreError

    if store is None and config is not None:
        try:
            store = load_config(config).outputs.store
        except ConfigError as exc:
            raise _fail(str(exc), 2) from exc
        if store is None:
            raise _fail(f"{config}: outputs.store is not set (no alert history kept)", 2)
    try:
        return AlertStore(store or Path("runs/alerts.db"), create=False)
    except StoreError as exc:
        raise _fail(str(exc), 2) from exc


def _query(
    camera: str | None, since: str | None, until: str | None, verdict: str | None, limit: int
) -> Any:
    from pipelines.sinks.store import VERDICTS, Query, parse_time

    if verdict is not None and verdict not in (*VERDICTS, "none"):
        raise _fail(f"--verdict must be {', '.join(VERDICTS)} or none, got {verdict!r}", 2)
    try:
        return Query(
            camera=camera,
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None,
            verdict=verdict,
            limit=limit,
        )
    except ValueError as exc:
        raise _fail(f"--since/--until: {exc}", 2) from exc


def _when(ts: float | None) -> str:
    from datetime import datetime

    return "" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@alerts_app.command("list")
def alerts_list(
    store: _Store = None,
    config: _Config = None,
    camera: _Camera = None,
    since: _Since = None,
    until: _Until = None,
    verdict: _Verdict = None,
    limit: Annotated[int, typer.Option(min=1, help="Most episodes, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """Alert episodes, newest first: time, camera, person, peak / threshold, duration,
    verdict, id."""
    db = _open_store(store, config)
    rows = db.query(_query(camera, since, until, verdict, limit))
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r.to_dict()))
        return
    typer.echo(f"{'first seen':<20}{'camera':<14}{'person':>7}{'peak':>9}{'thr':>8}"
               f"{'dur s':>7}  {'verdict':<12}{'status':<7} id")  # fmt: skip
    for r in rows:
        typer.echo(
            f"{_when(r.created_at):<20}{r.camera[:13]:<14}{r.track_id:>7}{r.peak_score:>9.3f}"
            f"{r.threshold:>8.3f}{r.duration_s:>7.1f}  {r.verdict or '-':<12}{r.status:<7} "
            f"{r.alert_id}"
        )
    typer.echo(f"{len(rows)} of {db.count(_query(camera, since, until, verdict, limit))} episodes")


def _write_out(path: Path, option: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` (text as UTF-8); a path that cannot be written (a folder,
    no such folder, no permission) exits 2 with one line naming ``option``."""
    try:
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    except OSError as exc:
        why = "it is a folder" if path.is_dir() else (exc.strerror or str(exc))
        raise _fail(
            f"{option} {path}: cannot write ({why}); give a file in a writable folder", 2
        ) from exc


def _resolve(db: Any, alert_id: str) -> Any:
    ids = db.resolve(alert_id) if len(alert_id) >= 4 else []
    if len(ids) != 1:
        what = "several alerts" if len(ids) > 1 else "no alert"
        raise _fail(f"{what} with id {alert_id!r} in {db.path}", 1)
    return db.get(ids[0])


@alerts_app.command("show")
def alerts_show(
    alert_id: Annotated[str, typer.Argument(help="Alert id (or its first characters).")],
    store: _Store = None,
    config: _Config = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of text.")] = False,
    snapshot: Annotated[
        Path | None, typer.Option(help="Write the episode's picture (JPEG) to this file.")
    ] = None,
) -> None:
    """One episode: its times, scores, model, joints, verdict (and every verdict given)."""
    db = _open_store(store, config)
    r = _resolve(db, alert_id)
    log_ = db.verdict_log(r.alert_id)
    if snapshot is not None:
        jpeg = db.snapshot(r.alert_id)
        if jpeg is None:
            raise _fail(f"alert {r.alert_id} has no picture in {db.path}")
        _write_out(snapshot, "--snapshot", jpeg)
    if as_json:
        out = {**r.to_dict(), "events": db.events(r.alert_id), "verdicts": log_}
        typer.echo(json.dumps(out, indent=2))
        return
    joints = ", ".join(f"{j['name']} {j['score']:.2f}" for j in r.top_joints)
    typer.echo(
        f"alert {r.alert_id}\ncamera {r.camera}, person {r.track_id}, {r.status}\n"
        f"first seen {_when(r.created_at)}; {r.duration_s:.1f} s (frame time {r.start_ts:.2f} "
        f"to {r.start_ts + r.duration_s:.2f})\n"
        f"peak score {r.peak_score:.3f}, threshold {r.threshold:.3f}; joints: {joints}\n"
        f"model {r.model_name}, version {r.model_version}, id {r.model_id or '-'}\n"
        f"verdict: {r.verdict or 'none'}" + (f" ({r.verdict_note})" if r.verdict_note else "")
    )
    for v in log_:
        typer.echo(f"  {_when(v['at'])} {v['verdict']} ({v['source']}) {v['note']}")
    if snapshot is not None:
        typer.echo(f"picture written to {snapshot}")


@alerts_app.command("export")
def alerts_export(
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    store: _Store = None,
    config: _Config = None,
    camera: _Camera = None,
    since: _Since = None,
    until: _Until = None,
    verdict: _Verdict = None,
    limit: Annotated[int, typer.Option(min=1, help="Most episodes, newest first.")] = 1_000_000,
) -> None:
    """Every matching episode as CSV (one row each) or JSON (a list), newest first."""
    import csv
    import io

    if fmt not in ("csv", "json"):
        raise _fail(f"--format must be csv or json, got {fmt!r}", 2)
    if out is not None and out.is_dir():
        raise _fail(f"--out {out} is a folder; give a file name (e.g. {out / f'alerts.{fmt}'})", 2)
    db = _open_store(store, config)
    rows = [r.to_dict() for r in db.query(_query(camera, since, until, verdict, limit))]
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buf = io.StringIO()
        cols = [c for c in (rows[0] if rows else {}) if c not in ("keypoints",)]
        w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "top_joints": " ".join(j["name"] for j in r["top_joints"]),
                        "bbox": " ".join(f"{v:.1f}" for v in r["bbox"])})  # fmt: skip
        text = buf.getvalue()
    if out is None:
        typer.echo(text, nl=False)
    else:
        _write_out(out, "--out", text)
        typer.echo(f"{len(rows)} episodes written to {out}", err=True)


@alerts_app.command("mark")
def alerts_mark(
    alert_id: Annotated[str, typer.Argument(help="Alert id (or its first characters).")],
    verdict: Annotated[str, typer.Option(help="false_alert or confirmed.")],
    note: Annotated[str, typer.Option(help="Optional note.")] = "",
    store: _Store = None,
    config: _Config = None,
) -> None:
    """Give an episode a verdict from the command line (as the page's buttons do)."""
    db = _open_store(store, config)
    r = _resolve(db, alert_id)
    try:
        out = db.set_verdict(r.alert_id, verdict, note, source="cli")
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    typer.echo(f"alert {out.alert_id}: {out.verdict}")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


# -- model files ------------------------------------------------------------------------------
model_app = typer.Typer(help="Model (checkpoint) files.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("migrate")
def model_migrate(
    old: Annotated[Path, typer.Argument(help="Checkpoint of an earlier posewatch (a pickle).")],
    new: Annotated[Path, typer.Argument(help="File to write in the current format.")],
) -> None:
    """Convert a checkpoint written by an earlier posewatch version, once. RUN IT ONLY ON
    FILES YOU TRUST: old checkpoints are Python pickles, which can run code. The file is
    read with torch's restricted unpickler (tensors and plain data only; anything else is
    refused, not run); the weights are copied bit for bit."""
    from forecasting.checkpoint import CHECKPOINT_VERSION, migrate_checkpoint

    typer.echo(
        f"migrating {old} -> {new}: only do this for a file you trust (an old checkpoint is a "
        "Python pickle)",
        err=True,
    )
    try:
        migrate_checkpoint(old, new)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"{new}: checkpoint format {CHECKPOINT_VERSION} (safetensors; loads without code)")


if __name__ == "__main__":  # python -m pipelines.cli
    main()
