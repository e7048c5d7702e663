"""What ``posewatch evaluate`` and ``posewatch calibrate`` do: score every person window of a
labelled split, turn the scores into frame scores and report AUC-ROC, AP, per-clip AUC and
recall at false-alert rates; or fit the alert threshold on the validation clips.

Protocol (same as STG-NF's, see ``../shared/benchmarks/anchors.md``): one frame-level AUC over
all test frames of all clips concatenated; frame score = the worst person; frames nobody
is scored in get the clip's most normal score. Two smoothings are reported: ``offline``
(symmetric Gaussian, comparable with the literature) and ``causal`` (half-Gaussian over past
frames only: what the live service can do). Clip scoring itself is
:mod:`pipelines.clip_scoring` (shared with the live path).

Example (scorers grouped into passes over a split):
    >>> scoring_passes(["nll", "minhde", "kde"], ["gru-nf"])
    [('gru-nf', ('minhde', 'kde')), (None, ('nll',))]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from detector.datasets import Clip, load_split
from forecasting.calibration import Calibration, caveat
from forecasting.checkpoint import Checkpoint, load_checkpoint, update_checkpoint
from forecasting.defaults import ALERT_MIN_DURATION_S, AUTO, DEFAULT_SAMPLES
from forecasting.detection_metrics import (
    alert_outcome,
    average_precision,
    recall_at_rates,
    roc_auc,
    roc_curve,
)
from forecasting.frame_scores import smooth
from forecasting.samplers import DEFAULT_SAMPLER, sampler_by_name
from forecasting.scoring import (
    SAMPLE_SCORERS,
    SCORERS,
    ScorerConfig,
    available_scorers,
    resolve_scorer,
)
from forecasting.snf import GRU_NF, SamplerConfig
from forecasting.train import build_windows
from forecasting.windows import WindowConfig, Windows
from pipelines.clip_scoring import (
    ClipScores,
    calibrate_on_clips,
    pooled,
    score_split,
    score_split_many,
)
from pipelines.feedback import apply_feedback
from pipelines.offline.plots import plot_roc, plot_timeline
from pipelines.serving import ServingSpec, calibration_record, scorer_config
from pipelines.tracks import load_tracks

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EvaluateRequest:
    """What to evaluate (``posewatch evaluate``; defaults are the command line's).

    Attributes:
        model: checkpoint.
        data: labelled dataset folder (AIHub2 or STG-NF layout).
        split: split to evaluate.
        scorers: scorer names (``auto`` = the default scorer); None: every scorer the
            checkpoint supports.
        samplers: sampler names of the sample-based scorers (``default`` = the checkpoint's
            own).
        stride: score every n-th frame of each track.
        sigma: offline (symmetric) smoothing, frames.
        causal_sigma: causal smoothing, frames.
        fps: frame rate of the dataset, frames per second (None: the checkpoint's,
            :attr:`~forecasting.checkpoint.Checkpoint.fps`); footage at another rate than the
            checkpoint's is scored on the model's time axis, as the live service does.
        samples: K futures per window.
        seed: sampling seed.
        out: output folder (``evaluation.json``, ``roc.png``, ``timelines/<clip>.png``).
        progress: show progress bars (stderr).
        labelled_only: score each clip only up to its last labelled frame (its tracks cut
            there); without it, labels shorter than a clip's poses are an error.
    """

    model: Path
    data: Path
    split: str = "test"
    scorers: tuple[str, ...] | None = None
    samplers: tuple[str, ...] = (GRU_NF.name, DEFAULT_SAMPLER)
    stride: int = 1
    sigma: float = 9.5
    causal_sigma: float = 6.0
    fps: float | None = None
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    out: Path = Path("runs/evaluate")
    progress: bool = True
    labelled_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "samplers", tuple(self.samplers))
        if self.scorers is not None:
            object.__setattr__(self, "scorers", tuple(self.scorers))


@dataclass(frozen=True, slots=True)
class CalibrateRequest:
    """What to calibrate (``posewatch calibrate``; defaults are the command line's).

    Attributes:
        model: checkpoint (the calibration is stored in it).
        data: the dataset the model was trained on (with ``all_clips``: any folder of pose
            files laid out as a dataset, ``<data>/pose/<split>/*.json``).
        split: split holding the checkpoint's validation clips (with ``all_clips``: the
            camera's footage).
        target_rate: false alerts per camera-hour the operator accepts.
        scorer: scorer name (``auto`` = the default scorer).
        sampler: sampler name (``default`` = the checkpoint's own, what the service serves).
        causal_sigma: causal smoothing, frames.
        min_duration: frames an alert must last (None: the service's
            ``alerting.min_duration_s`` at ``fps``, 15 frames at 30 fps).
        fps: frame rate of the dataset, frames per second (None: the checkpoint's,
            :attr:`~forecasting.checkpoint.Checkpoint.fps`); footage at another rate than the
            checkpoint's is scored on the model's time axis, as the live service does.
        samples: K futures per window.
        stride: score every n-th frame.
        progress: show a progress bar (stderr).
        feedback: alert store whose verdicts refine the threshold (:mod:`pipelines.feedback`).
        camera: only the verdicts of this camera (default: every camera's).
        all_clips: fit on every clip of ``split`` (footage of the camera the model will
            serve, labelled or not: unlabelled frames are taken as normal, as cold start
            takes a new camera's first minutes) instead of the checkpoint's validation clips.
    """

    model: Path
    data: Path
    split: str = "train"
    target_rate: float = 1.0
    scorer: str = AUTO
    sampler: str = DEFAULT_SAMPLER
    causal_sigma: float = 6.0
    min_duration: int | None = None
    fps: float | None = None
    samples: int = DEFAULT_SAMPLES
    stride: int = 1
    progress: bool = True
    feedback: Path | None = None
    camera: str | None = None
    all_clips: bool = False


@dataclass(slots=True)
class ScorerReport:
    """Metrics of one scorer on one split (AUCs, APs and recalls in 0..1).

    Attributes:
        scorer: scorer name.
        sampler: sampler name (``-`` for scorers that draw no futures).
        auc_offline: frame AUC-ROC, symmetric smoothing.
        auc_causal: frame AUC-ROC, causal smoothing.
        auc_raw: frame AUC-ROC, no smoothing.
        ap_offline: average precision, symmetric smoothing.
        ap_causal: average precision, causal smoothing.
        mean_clip_auc_offline: mean per-clip AUC (clips with one class skipped).
        mean_clip_auc_causal: the same, causal smoothing.
        recall: event recall at 1 and 5 false alerts per camera-hour (one dict each).
        seconds: scoring time of the pass, seconds.
        windows_per_second: windows scored per second.
        calibrated: the checkpoint's calibration and how its threshold does on this split
            (only when it was fitted for this scorer configuration).
    """

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


def _fps(req: EvaluateRequest | CalibrateRequest, ckpt: Checkpoint) -> float:
    """The dataset's frame rate: ``req.fps``, else the checkpoint's."""
    return ckpt.fps if req.fps is None else req.fps


def alert_frames(fps: float) -> int:
    """Frames an alert must last by default: the service's ``alerting.min_duration_s`` (0.5
    s) at ``fps`` frames per second, at least 1.

    >>> alert_frames(30.0), alert_frames(25.0), alert_frames(1.0)
    (15, 12, 1)
    """
    return max(1, round(ALERT_MIN_DURATION_S * fps))


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
    min_duration: int | None = None,
) -> ScorerReport:
    """Compute every metric for one scorer's clip scores (smoothing in frames, ``fps`` in
    frames per second; ``calibration``: also report how its threshold does).

    Alerts are counted by the service's rule (to within a frame: the service starts an
    episode once ``alerting.min_duration_s`` has passed since the first frame above the
    threshold): runs above the threshold lasting ``min_duration`` frames (default:
    :func:`alert_frames` at ``fps``); a calibration's threshold is checked with the rule
    it was fitted for (its ``min_duration``)."""
    if min_duration is None:
        min_duration = alert_frames(fps)
    s_off, y, per_off = pooled(clips, sigma_offline, False)
    s_cau, _, per_cau = pooled(clips, sigma_causal, True)
    s_raw = np.concatenate([c.frames for c in clips])
    clip_auc_off = [roc_auc(lab, s) for s, lab in per_off]
    clip_auc_cau = [roc_auc(lab, s) for s, lab in per_cau]
    recalls = recall_at_rates(per_cau, fps, (1.0, 5.0), min_duration)
    cal = None
    if calibration is not None:
        false, hit, n_ev, fa, nf = alert_outcome(
            per_cau, calibration.threshold, calibration.min_duration
        )
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
    shared draw of futures); then the scorers that draw none (``nll``, ``posture``) alone
    with no sampler (None).

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


def format_reports(rows: Sequence[ScorerReport]) -> str:
    """A text table of reports, one row each (percentages; windows per second)."""
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
    """Write ``payload`` as indented JSON (folders are created; numpy floats as floats)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))


def normal_window_sets(
    data: Path,
    validation_clips: Collection[str],
    wcfg: WindowConfig,
    stride: int,
    train_stride: int | None = None,
    test: bool = True,
) -> dict[str, Windows]:
    """Windows whose frames are all labelled normal, per set: ``validation`` of the train
    split's clips named in ``validation_clips`` (a checkpoint's held-out clips), ``test`` of
    the test split (unless not ``test``), ``train`` of the other train clips (only with
    ``train_stride``). Window starts ``stride`` frames apart; the sets injected anomalies
    and the held-out statistics are measured on.

    Raises:
        detector.datasets.DatasetError: as :func:`pipelines.tracks.load_tracks`.
    """
    held_out = set(validation_clips)
    tracks = load_tracks(data, "train")
    val = [t for t in tracks if t.clip in held_out]
    out = {"validation": build_windows(val, wcfg, stride, normal_only=True)}
    if test:
        out["test"] = build_windows(load_tracks(data, "test"), wcfg, stride, normal_only=True)
    if train_stride is not None:
        train = [t for t in tracks if t.clip not in held_out]
        out["train"] = build_windows(train, wcfg, train_stride, normal_only=True)
    return out


def load_clips(
    data: Path, split: str, labelled_only: bool = False, require_labels: bool | None = None
) -> list[Clip]:
    """Every clip of one split of a dataset (:func:`detector.datasets.load_split`), with
    labels that cover its poses.

    Arguments:
        data: dataset folder.
        split: split name.
        labelled_only: cut each clip at its last labelled frame
            (:meth:`~detector.datasets.Clip.labelled_only`); the frames cut are logged.
        require_labels: see :func:`detector.datasets.iter_split` (False: unlabelled clips
            are all normal).

    Raises:
        detector.datasets.DatasetError: a clip whose labels stop before its poses (without
            ``labelled_only``), or a bad dataset layout.
    """
    clips = load_split(data, split, require_labels)
    if not labelled_only:
        for c in clips:
            c.check_labels()
        return clips
    out = [c.labelled_only() for c in clips]
    for before, after in zip(clips, out, strict=True):
        if after.posed_frames < before.posed_frames:
            log.warning(
                f"clip {before.name!r}: scoring its {after.num_frames:,} labelled frames only; "
                f"frames {after.num_frames:,} to {before.posed_frames - 1:,} have poses but no "
                "labels"
            )
    return out


def _sampler(ckpt: Checkpoint, name: str) -> SamplerConfig:
    """The sampler called ``name`` for the checkpoint's model (``default``: its own)."""
    return sampler_by_name(name, ckpt.model.flow.num_layers, ckpt.sampler)


@dataclass(slots=True)
class _Results:
    """What the passes of ``evaluate`` collect: reports, ROC curves, per-clip timelines."""

    reports: list[ScorerReport]
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]]
    timelines: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]


def _score_passes(
    req: EvaluateRequest, ckpt: Checkpoint, scorers: Sequence[str], clips: Sequence[Clip]
) -> _Results:
    """Every (scorer, sampler) pair scored; the sample-based scorers of one sampler share
    one draw of futures (their seconds are the shared pass's)."""
    calibration = Calibration.from_record(ckpt.calibration)
    res = _Results([], {}, {}, {})
    for sname_or_none, names in scoring_passes(scorers, req.samplers):
        sname = sname_or_none or "-"
        sampler = _sampler(ckpt, sname_or_none or GRU_NF.name)
        base = ScorerConfig(name=names[0], num_samples=req.samples, sampler=sampler, seed=req.seed)  # type: ignore[arg-type]
        many, secs, nw = score_split_many(
            ckpt, clips, base, names, req.stride, req.progress, _fps(req, ckpt)
        )
        for scorer in names:
            cfg = replace(base, name=scorer)  # type: ignore[arg-type]
            cs = many[scorer]
            # The stored threshold applies when it was fitted for this scorer, sampler, K and
            # model (pipelines.serving.ServingSpec, what the service checks too).
            fitted = ServingSpec.from_calibration(ckpt.calibration)
            same = (
                calibration is not None
                and fitted is not None
                and not fitted.differences(ServingSpec.of(ckpt, cfg))
            )
            rep = report(
                scorer,
                sname,
                cs,
                req.sigma,
                req.causal_sigma,
                _fps(req, ckpt),
                secs,
                nw,
                calibration if same else None,
            )
            res.reports.append(rep)
            s_off, y, _ = pooled(cs, req.sigma, False)
            fpr, tpr = roc_curve(y, s_off)
            res.curves[f"{scorer}/{sname}"] = (fpr, tpr, rep.auc_offline)
            for c in cs:
                series = smooth(c.frames, req.causal_sigma, True)
                res.timelines.setdefault(c.name, {})[f"{scorer}/{sname}"] = series
                res.labels[c.name] = c.labels
    return res


def run_evaluate(req: EvaluateRequest) -> dict[str, Any]:
    """Score a labelled split with every (scorer, sampler) pair; write ``evaluation.json``,
    ``roc.png`` and one timeline PNG per clip under ``req.out``; log the table.

    Returns:
        The payload written to ``evaluation.json`` (settings and one report per pair).

    Raises:
        ValueError: an unknown scorer or sampler, or a posture scorer for a checkpoint
            without posture flows.
        FileNotFoundError: no such checkpoint.
        detector.datasets.DatasetError: ``req.data`` is not a pose dataset, or a clip's
            labels stop before its poses (without ``req.labelled_only``).
    """
    ckpt = load_checkpoint(req.model)
    scorers = (
        available_scorers(ckpt.model)
        if req.scorers is None
        else list(dict.fromkeys(resolve_scorer(k, ckpt.model) for k in req.scorers))
    )
    for name in req.samplers:  # unknown names fail before anything is scored
        _sampler(ckpt, name)
    clips = load_clips(req.data, req.split, req.labelled_only)
    res = _score_passes(req, ckpt, scorers, clips)
    req.out.mkdir(parents=True, exist_ok=True)
    plot_roc(res.curves, req.out / "roc.png")
    for name, series in res.timelines.items():
        plot_timeline(name, series, res.labels[name], req.out / "timelines" / f"{name}.png")
    normal_only = (ckpt.meta.get("train_config") or {}).get("normal_only", True)
    payload = {
        "model": str(req.model),
        "code_version": ckpt.meta.get("code_version"),
        "data": str(req.data),
        "split": req.split,
        "stride": req.stride,
        "sigma_offline": req.sigma,
        "sigma_causal": req.causal_sigma,
        "fps": _fps(req, ckpt),
        "K": req.samples,
        "frames": sum(c.num_frames for c in clips),
        "labelled_only": req.labelled_only,
        "training_regime": "normal windows of the training split (train labels used to drop anomalous windows)"
        if normal_only
        else "all training windows (unsupervised)",
        "reports": [asdict(r) for r in res.reports],
    }
    write_json(req.out / "evaluation.json", payload)
    log.info(format_reports(res.reports))
    log.info(
        f"wrote {req.out / 'evaluation.json'}, {req.out / 'roc.png'} and "
        f"{len(res.timelines)} timelines"
    )
    return payload


def validation_clip_scores(
    ckpt: Checkpoint,
    data: Path,
    split: str,
    cfg: ScorerConfig,
    stride: int = 1,
    progress: bool = False,
    all_clips: bool = False,
    fps: float | None = None,
) -> list[ClipScores]:
    """Scores of the checkpoint's validation clips (every clip of ``split`` for a checkpoint
    that names none, or with ``all_clips``; then labels are optional and unlabelled clips
    are all normal), what ``calibrate`` fits thresholds on; ``fps``: the clips' frame rate
    (None: the model's).

    Raises:
        ValueError: none of those clips in ``data``.
        detector.datasets.DatasetError: labels that stop before the poses; a clip without
            labels unless ``all_clips``.
    """
    if all_clips:  # an empty or missing split folder is a DatasetError of load_split's
        return score_split(ckpt, load_clips(data, split, require_labels=False), cfg, stride, progress, fps)[0]  # fmt: skip
    val = set(ckpt.meta.get("validation_clips") or [])
    clips = [c for c in load_clips(data, split) if not val or c.name in val]
    if not clips:
        raise ValueError(
            f"no validation clips of the checkpoint found in {data}/pose/{split} (footage of "
            "the camera the model will serve: --all-clips)"
        )
    return score_split(ckpt, clips, cfg, stride, progress, fps)[0]


def fit_calibration(ckpt: Checkpoint, req: CalibrateRequest) -> tuple[Calibration, ScorerConfig, int]:  # fmt: skip
    """The threshold :func:`run_calibrate` fits for ``req`` (before feedback), with ``ckpt``
    as given (``req.model`` is not read: a checkpoint changed in memory is fitted as it
    is) and nothing written.

    Returns:
        ``(calibration, the scorer configuration it is for (as the service builds it), clips
        fitted on)``.

    Raises:
        ValueError: as :func:`run_calibrate`.
    """
    cfg = scorer_config(ckpt, req.scorer, req.sampler, req.samples)  # as the service builds it
    fps = _fps(req, ckpt)
    cs = validation_clip_scores(
        ckpt, req.data, req.split, cfg, req.stride, req.progress, req.all_clips, fps
    )
    min_duration = alert_frames(fps) if req.min_duration is None else req.min_duration
    return (
        calibrate_on_clips(cs, req.causal_sigma, fps, req.target_rate, min_duration),
        cfg,
        len(cs),
    )


def run_calibrate(req: CalibrateRequest) -> Calibration:
    """Fit the alert threshold on the normal frames of the checkpoint's validation clips (or,
    with ``all_clips``, of every clip of the split: the camera's own footage) and store it in
    the checkpoint.

    The stored calibration holds the :class:`~forecasting.calibration.Calibration` fields
    plus what it is valid for: ``scorer`` (the full :class:`ScorerConfig`, sampler and K
    included), ``sigma_causal`` (frames), ``model`` (:meth:`Checkpoint.model_id`, with the
    posture flows for the posture scorers) and ``stride``. The service refuses a threshold
    fitted for another configuration than the one it serves.

    Returns:
        The calibration (threshold in the scorer's units after causal smoothing).

    Raises:
        ValueError: no validation clip of the checkpoint in ``req.data``, an unknown scorer
            or sampler, or no normal footage to fit on.
        FileNotFoundError: no such checkpoint.
    """
    if req.feedback is not None and not Path(req.feedback).is_file():
        raise FileNotFoundError(f"--feedback: no alert store at {req.feedback}")
    ckpt = load_checkpoint(req.model)
    cal, cfg, n_clips = fit_calibration(ckpt, req)
    fb = apply_feedback(
        cal.threshold, ckpt, cfg, req.feedback, req.camera, req.causal_sigma, req.stride
    )
    cal = replace(cal, threshold=fb.threshold)
    update_checkpoint(
        req.model,
        calibration={
            **cal.to_dict(),
            **calibration_record(ckpt, cfg),  # "scorer" and "model"
            "sigma_causal": req.causal_sigma,
            "stride": req.stride,
            **(fb.record() if req.feedback is not None else {}),
        },
    )
    log.info(
        f"threshold {cal.threshold:.4f} for {req.target_rate:g} false alerts per camera-hour "
        f"({cal.method}, {cal.hours * 60:.1f} normal minutes of {n_clips} clips); "
        f"stored in {req.model}"
    )
    if note := caveat(cal.to_dict()):
        log.warning("%s", note)
    if req.feedback is not None:
        log.info(fb.note())
    return cal


__all__ = [
    "CalibrateRequest",
    "EvaluateRequest",
    "ScorerReport",
    "alert_frames",
    "fit_calibration",
    "format_reports",
    "load_clips",
    "normal_window_sets",
    "report",
    "run_calibrate",
    "run_evaluate",
    "scoring_passes",
    "validation_clip_scores",
    "write_json",
]
