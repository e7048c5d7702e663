"""What ``posewatch evaluate`` does: score every person window of a labelled split, turn the
scores into frame scores and report AUC-ROC, AP, per-clip AUC and recall at false-alert rates.

Protocol (same as STG-NF's, see ``../shared/benchmarks/anchors.md``): one frame-level AUC over
all test frames of all clips concatenated; frame score = the worst person; frames nobody
is scored in get the clip's most normal score. Two smoothings are reported: ``offline``
(symmetric Gaussian, comparable with the literature) and ``causal`` (half-Gaussian over past
frames only: what the live service can do).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from detector.datasets import Clip, load_split
from forecasting.calibration import Calibration, calibrate_threshold, normal_segments
from forecasting.checkpoint import Checkpoint
from forecasting.detection_metrics import (
    alert_outcome,
    average_precision,
    recall_at_rates,
    roc_auc,
)
from forecasting.frame_scores import person_frame_scores, smooth, worst_person
from forecasting.scoring import (
    SAMPLE_SCORERS,
    SCORERS,
    ScorerConfig,
    available_scorers,
    resolve_scorer,
    score_windows_many,
)
from forecasting.torch_model import Forecaster
from forecasting.windows import WindowConfig, cut_windows

T = TypeVar("T")


@dataclass(slots=True)
class ClipScores:
    """Raw (unsmoothed) frame scores of one clip, with its labels and per-person scores."""

    name: str
    frames: np.ndarray  # (N,) raw frame scores (worst person, empty frames filled)
    labels: np.ndarray  # (N,)
    persons: dict[int, np.ndarray] = field(default_factory=dict)  # track -> (N,) with NaN
    windows: int = 0  # person windows scored


def score_clip(
    model: Forecaster,
    wcfg: WindowConfig,
    clip: Clip,
    scorer: ScorerConfig,
    stride: int = 1,
) -> ClipScores:
    """Score every window (stride ``stride``) of every track of a clip.

    Each window's score is placed on its last frame and gaps are filled within each window
    only (causal: the live service computes exactly these scores, see track_scoring).
    """
    return score_clip_many(model, wcfg, clip, scorer, (scorer.name,), stride)[scorer.name]


def score_clip_many(
    model: Forecaster,
    wcfg: WindowConfig,
    clip: Clip,
    scorer: ScorerConfig,
    names: Sequence[str],
    stride: int = 1,
) -> dict[str, ClipScores]:
    """:func:`score_clip` for several scorers from one draw of futures per window."""
    n = clip.num_frames
    persons: dict[str, dict[int, np.ndarray]] = {k: {} for k in names}
    n_windows = 0
    for tid, tr in clip.tracks.items():
        w = cut_windows(tr.keypoints, wcfg, stride=stride, fill="window")
        if len(w):  # a window is scored at its last frame only if the person is there
            w = w.select(tr.present[w.start + (wcfg.length - 1) * wcfg.frame_step])
        if len(w) == 0:
            continue
        many = score_windows_many(model, w.poses, w.mask, w.visible, scorer, names)
        n_windows += len(w)
        end_rows = w.start + (wcfg.length - 1) * wcfg.frame_step
        for k, s in many.items():
            x = person_frame_scores(tr.frames[end_rows], s.score, n)
            # with stride > 1, hold each score until the next scored frame
            persons[k][tid] = _hold(x, stride * wcfg.frame_step) if stride > 1 else x
    labels = clip.frame_labels()[:n]
    return {
        k: ClipScores(clip.name, worst_person(list(pp.values()), n), labels, pp, n_windows)
        for k, pp in persons.items()
    }


def _hold(x: np.ndarray, span: int) -> np.ndarray:
    out = x.copy()
    last = np.nan
    left = 0
    for i in range(len(out)):
        if np.isfinite(out[i]):
            last, left = out[i], span - 1
        elif left > 0:
            out[i], left = last, left - 1
    return out


@dataclass(slots=True)
class ScorerReport:
    """Metrics of one scorer on one split."""

    scorer: str
    sampler: str
    auc_offline: float
    auc_causal: float
    auc_raw: float
    ap_offline: float
    ap_causal: float
    mean_clip_auc_offline: float
    mean_clip_auc_causal: float
    recall: list[dict[str, float]]
    seconds: float
    windows_per_second: float
    calibrated: dict[str, Any] | None = None


def pooled(
    clips: Sequence[ClipScores], sigma: float, causal: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Smoothed scores and labels of all clips concatenated, plus per-clip pairs."""
    per = [(smooth(c.frames, sigma, causal), c.labels) for c in clips]
    return np.concatenate([p[0] for p in per]), np.concatenate([p[1] for p in per]), per


def report(
    name: str,
    sampler: str,
    clips: Sequence[ClipScores],
    sigma_offline: float,
    sigma_causal: float,
    fps: float,
    seconds: float,
    n_windows: int,
    calibration: Calibration | None = None,
    min_duration: int = 1,
) -> ScorerReport:
    """Compute every metric for one scorer's clip scores."""
    s_off, y, per_off = pooled(clips, sigma_offline, False)
    s_cau, _, per_cau = pooled(clips, sigma_causal, True)
    s_raw = np.concatenate([c.frames for c in clips])
    clip_auc_off = [roc_auc(lab, s) for s, lab in per_off]
    clip_auc_cau = [roc_auc(lab, s) for s, lab in per_cau]
    recalls = recall_at_rates(per_cau, fps, (1.0, 5.0), min_duration)
    cal = None
    if calibration is not None:
        false, hit, n_ev, fa, nf = alert_outcome(per_cau, calibration.threshold, min_duration)
        normal_hours = float((y == 0).sum()) / fps / 3600
        cal = {
            **calibration.to_dict(),
            "test_false_per_hour": false / normal_hours if normal_hours else float("nan"),
            "test_false_alerts": false,
            "test_event_recall": hit / max(n_ev, 1),
            "test_frame_recall": fa / max(nf, 1),
        }
    return ScorerReport(
        scorer=name,
        sampler=sampler,
        auc_offline=roc_auc(y, s_off),
        auc_causal=roc_auc(y, s_cau),
        auc_raw=roc_auc(y, s_raw),
        ap_offline=average_precision(y, s_off),
        ap_causal=average_precision(y, s_cau),
        mean_clip_auc_offline=float(np.nanmean(clip_auc_off)),
        mean_clip_auc_causal=float(np.nanmean(clip_auc_cau)),
        recall=[asdict(r) for r in recalls],
        seconds=seconds,
        windows_per_second=n_windows / seconds if seconds > 0 else float("nan"),
        calibrated=cal,
    )


def scoring_passes(
    scorers: Sequence[str], samplers: Sequence[T]
) -> list[tuple[T | None, tuple[str, ...]]]:
    """Group scorers into passes over a split: per sampler, the sample-based scorers (one
    shared draw of futures); then ``nll`` alone with no sampler (None).

    Raises:
        ValueError: a scorer name that does not exist.
    """
    unknown = [k for k in scorers if k not in SCORERS]
    if unknown:
        raise ValueError(f"unknown scorer {unknown}; choose from {', '.join(SCORERS)}")
    sampled = tuple(k for k in SAMPLE_SCORERS if k in scorers)
    passes: list[tuple[T | None, tuple[str, ...]]] = [(s, sampled) for s in samplers if sampled]
    unsampled = tuple(k for k in SCORERS if k in scorers and k not in SAMPLE_SCORERS)
    if unsampled:
        passes.append((None, unsampled))
    return passes


def score_split(
    ckpt: Checkpoint,
    clips: Sequence[Clip],
    scorer: ScorerConfig,
    stride: int = 1,
    progress: bool = True,
) -> tuple[list[ClipScores], float, int]:
    """Score all clips; returns (clip scores, seconds, windows scored)."""
    many, secs, n_windows = score_split_many(ckpt, clips, scorer, (scorer.name,), stride, progress)
    return many[scorer.name], secs, n_windows


def score_split_many(
    ckpt: Checkpoint,
    clips: Sequence[Clip],
    scorer: ScorerConfig,
    names: Sequence[str],
    stride: int = 1,
    progress: bool = True,
) -> tuple[dict[str, list[ClipScores]], float, int]:
    """:func:`score_split` for several scorers sharing one draw of futures per window."""
    t0 = time.perf_counter()
    out: dict[str, list[ClipScores]] = {k: [] for k in names}
    n_windows = 0
    desc = f"score {'+'.join(names)}"
    for clip in tqdm(clips, disable=not progress, desc=desc, unit="clip"):
        many = score_clip_many(ckpt.model, ckpt.window_config, clip, scorer, names, stride)
        for k, cs in many.items():
            out[k].append(cs)
        n_windows += next(iter(many.values())).windows
    return out, time.perf_counter() - t0, n_windows


def calibrate_on_clips(
    clips: Sequence[ClipScores], sigma: float, fps: float, target_per_hour: float, min_duration: int
) -> Calibration:
    """Fit the threshold on the normal segments of (validation) clips' causal-smoothed scores."""
    streams = []
    for c in clips:
        streams.extend(normal_segments(smooth(c.frames, sigma, True), c.labels, min_len=10))
    return calibrate_threshold(streams, fps, target_per_hour, min_duration)


def format_reports(rows: Sequence[ScorerReport]) -> str:
    head = (
        f"{'scorer':<8}{'sampler':<22}{'AUC off':>8}{'AUC cau':>8}{'AUC raw':>8}{'AP off':>8}{'AP cau':>8}"
        f"{'clipAUC':>8}{'R@1/h':>7}{'R@5/h':>7}{'win/s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.scorer:<8}{r.sampler:<22}{100 * r.auc_offline:>8.1f}{100 * r.auc_causal:>8.1f}{100 * r.auc_raw:>8.1f}"
            f"{100 * r.ap_offline:>8.1f}{100 * r.ap_causal:>8.1f}{100 * r.mean_clip_auc_causal:>8.1f}"
            f"{100 * r.recall[0]['event_recall']:>7.0f}{100 * r.recall[1]['event_recall']:>7.0f}{r.windows_per_second:>8.0f}"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))


def load_clips(data: Path, split: str) -> list[Clip]:
    return load_split(data, split)


def sampler_by_name(ckpt: Checkpoint, name: str) -> Any:
    """``gru-nf``, ``default`` (the checkpoint's own sampler) or any name of the forecast table."""
    from forecasting.evaluate import default_samplers

    if name == "default":
        return ckpt.sampler
    for s in default_samplers(ckpt.model.flow.num_layers):
        if s.name == name:
            return s
    names = ", ".join(["default", *(s.name for s in default_samplers(ckpt.model.flow.num_layers))])
    raise ValueError(f"unknown sampler {name!r}; choose from {names}")


def run_evaluate(
    model_path: Path,
    data: Path,
    split: str,
    scorers: Sequence[str] | None,
    samplers: Sequence[str],
    stride: int,
    sigma: float,
    causal_sigma: float,
    fps: float,
    out: Path,
    samples: int,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a labelled split with every (scorer, sampler) pair; write JSON, ROC and timelines.

    ``scorers`` None: every scorer the checkpoint supports; ``auto`` stands for the default."""
    import typer

    from forecasting.checkpoint import load_checkpoint
    from forecasting.detection_metrics import roc_curve
    from pipelines.plots import plot_roc, plot_timeline

    ckpt = load_checkpoint(model_path)
    scorers = (
        available_scorers(ckpt.model)
        if scorers is None
        else list(dict.fromkeys(resolve_scorer(k, ckpt.model) for k in scorers))
    )
    clips = load_clips(data, split)
    cal = ckpt.calibration.get("threshold") if ckpt.calibration else None
    fields = Calibration.__dataclass_fields__
    calibration = (
        Calibration(**{k: v for k, v in ckpt.calibration.items() if k in fields})
        if cal is not None
        else None
    )
    reports: list[ScorerReport] = []
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    timelines: dict[str, dict[str, np.ndarray]] = {}
    # The sample-based scorers of one sampler share one draw of futures (their seconds are
    # the shared pass's).
    for sname_or_none, names in scoring_passes(scorers, samplers):
        sname = sname_or_none or "-"
        sampler = sampler_by_name(ckpt, sname_or_none or "gru-nf")
        base = ScorerConfig(name=names[0], num_samples=samples, sampler=sampler, seed=seed)  # type: ignore[arg-type]
        many, secs, nw = score_split_many(ckpt, clips, base, names, stride, progress)
        for scorer in names:
            cfg = replace(base, name=scorer)  # type: ignore[arg-type]
            cs = many[scorer]
            same = calibration is not None and ckpt.calibration.get("scorer") == cfg.to_dict()
            rep = report(
                scorer, sname, cs, sigma, causal_sigma, fps, secs, nw, calibration if same else None
            )
            reports.append(rep)
            s_off, y, _ = pooled(cs, sigma, False)
            fpr, tpr = roc_curve(y, s_off)
            curves[f"{scorer}/{sname}"] = (fpr, tpr, rep.auc_offline)
            for c in cs:
                timelines.setdefault(c.name, {})[f"{scorer}/{sname}"] = smooth(
                    c.frames, causal_sigma, True
                )
                timelines[c.name]["_labels"] = c.labels
    out.mkdir(parents=True, exist_ok=True)
    plot_roc(curves, out / "roc.png")
    for name, series in timelines.items():
        labels = series.pop("_labels")
        plot_timeline(name, series, labels, out / "timelines" / f"{name}.png")
    payload = {
        "model": str(model_path),
        "code_version": ckpt.meta.get("code_version"),
        "data": str(data),
        "split": split,
        "stride": stride,
        "sigma_offline": sigma,
        "sigma_causal": causal_sigma,
        "fps": fps,
        "K": samples,
        "training_regime": "normal windows of the training split (train labels used to drop anomalous windows)"
        if (ckpt.meta.get("train_config") or {}).get("normal_only", True)
        else "all training windows (unsupervised)",
        "reports": [asdict(r) for r in reports],
    }
    write_json(out / "evaluation.json", payload)
    typer.echo(format_reports(reports))
    typer.echo(f"wrote {out / 'evaluation.json'}, {out / 'roc.png'} and {len(timelines)} timelines")
    return payload


def run_calibrate(
    model_path: Path,
    data: Path,
    split: str,
    scorer: str,
    sampler: str,
    target_per_hour: float,
    causal_sigma: float,
    min_duration: int,
    fps: float,
    samples: int,
    stride: int,
) -> Calibration:
    """Fit the alert threshold on the normal frames of the checkpoint's validation clips."""
    import typer

    from forecasting.checkpoint import load_checkpoint, update_checkpoint

    ckpt = load_checkpoint(model_path)
    val = set(ckpt.meta.get("validation_clips") or [])
    clips = [c for c in load_clips(data, split) if not val or c.name in val]
    if not clips:
        raise ValueError(f"no validation clips of the checkpoint found in {data}/pose/{split}")
    cfg = ScorerConfig(
        name=resolve_scorer(scorer, ckpt.model),
        num_samples=samples,
        sampler=sampler_by_name(ckpt, sampler),
    )
    cs, _, _ = score_split(ckpt, clips, cfg, stride, progress=True)
    cal = calibrate_on_clips(cs, causal_sigma, fps, target_per_hour, min_duration)
    update_checkpoint(
        model_path,
        calibration={**cal.to_dict(), "scorer": cfg.to_dict(), "sigma_causal": causal_sigma},
    )
    typer.echo(
        f"threshold {cal.threshold:.4f} for {target_per_hour:g} false alerts per camera-hour "
        f"({cal.method}, {cal.hours * 60:.1f} normal minutes of {len(clips)} clips); stored in {model_path}"
    )
    return cal
