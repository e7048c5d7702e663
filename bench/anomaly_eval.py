"""Anomaly detection on AIHub2: train N seeds, evaluate scorers x {GRU-NF, GRU-SNF}.

GRU-SNF is scored with the sampler a checkpoint trained now carries
(:data:`forecasting.snf.CHECKPOINT_SAMPLER`, ``gru-snf-t0.8``), whatever the cached member
checkpoints were saved with, so the ``default`` row is what ``posewatch train`` then
``posewatch run`` give; ``--samplers gru-snf`` scores the same at temperature 1.

Each seed's model is the default ensemble of ``--members`` GRU-NFs (seeds ``seed * M + r``)
with the default posture flows (flow seeds ``seed * F + f``), added when missing.

Prints a table of mean and sample std over seeds of frame AUC-ROC (offline and causal
smoothing), AP, mean per-clip AUC and event recall at 1 and 5 false alerts per camera-hour,
and writes ``bench/results/anomaly_aihub2.json``. What early stop costs and saves is
``bench/early_stop_margin.py``'s (its ``--early-stop-margin`` here, in ``minhde`` units
only, went in session 27).

Usage::

    .venv/bin/python bench/anomaly_eval.py [--seeds 0 1 2] [--data ../shared/data/aihub2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_MEMBERS, DEFAULT_SAMPLES, DEFAULT_SCORER
from forecasting.detection_metrics import alert_outcome
from forecasting.frame_scores import smooth
from forecasting.posture import PostureConfig
from forecasting.scoring import (
    POSTURE_SCORERS,
    SAMPLE_SCORERS,
    SCORERS,
    ScorerConfig,
    posture_of,
)
from forecasting.snf import CHECKPOINT_SAMPLER, GRU_NF, SNF_DEFAULT
from pipelines.clip_scoring import (
    ClipScores,
    calibrate_on_clips,
    pooled,
    score_split_many,
)
from pipelines.offline.evaluation import (
    alert_frames,
    load_clips,
    report,
    scoring_passes,
    validation_clip_scores,
)
from pipelines.offline.training import (
    EnsembleRequest,
    PostureRequest,
    TrainRequest,
    run_ensemble,
    run_posture,
    run_training,
)


def _recipe(cfg: PostureConfig) -> tuple[float, int, float, int]:
    """What decides how posture flows are trained: a checkpoint whose flows differ from the
    default's in it gets the default's (upright turn, its frames, yaw augmentation, epochs)."""
    return (cfg.upright, cfg.upright_frames, cfg.yaw, cfg.epochs)


def episodes(clips: list[ClipScores], thr: float, sigma: float, min_frames: int) -> set[tuple[str, int, int]]:  # fmt: skip
    """Alert episodes as the service raises them, approximately: per person, runs of at
    least ``min_frames`` frames whose causal-smoothed score is above ``thr``; (clip,
    person, first frame) each."""
    out = set()
    for c in clips:
        for tid, x in c.persons.items():
            seen = np.isfinite(x)
            if not seen.any():
                continue
            sm = np.full(len(x), -np.inf)
            sm[seen] = smooth(x[seen], sigma, causal=True)
            above = np.r_[False, sm > thr, False]
            starts = np.flatnonzero(~above[:-1] & above[1:])
            ends = np.flatnonzero(above[:-1] & ~above[1:])
            out |= {(c.name, tid, int(a)) for a, b in zip(starts, ends, strict=True) if b - a >= min_frames}  # fmt: skip
    return out


def _calibrated_outcomes(
    fit: list[ClipScores], test: list[tuple[np.ndarray, np.ndarray]], sigma: float, prefix: str
) -> dict[str, float]:
    """Thresholds fitted as ``posewatch calibrate`` fits them on the normal frames of ``fit``
    (causal smoothing ``sigma``, the service's alert length) for 1 and 5 false alerts per
    camera-hour, and at each the share of ``test``'s anomaly events alerted and the false
    alerts per hour on its normal frames (``test``: smoothed ``(scores, labels)`` per clip);
    keys ``{prefix}calibrated_{threshold,recall,false_per_hour}_{1h,5h}``."""
    hours = sum(float((lab == 0).sum()) for _, lab in test) / 30.0 / 3600
    frames = alert_frames(30.0)
    out: dict[str, float] = {}
    for rate in (1.0, 5.0):
        cal = calibrate_on_clips(fit, sigma, 30.0, rate, frames)
        false, hit, n_ev, _, _ = alert_outcome(test, cal.threshold, frames)
        out[f"{prefix}calibrated_threshold_{rate:g}h"] = cal.threshold
        out[f"{prefix}calibrated_recall_{rate:g}h"] = hit / max(n_ev, 1)
        out[f"{prefix}calibrated_false_per_hour_{rate:g}h"] = false / hours
    return out


def calibrated_recall(
    ck: Any, data: Path, cfg: ScorerConfig, test: list[ClipScores], sigma: float
) -> dict[str, float]:
    """What an operator gets: :func:`_calibrated_outcomes` fitted on the checkpoint's
    validation clips, measured on the test split."""
    return _calibrated_outcomes(
        validation_clip_scores(ck, data, "train", cfg), pooled(test, sigma, True)[2], sigma, ""
    )


#: Frames at the start of every AIHub2 test clip, all normal (the first event starts at frame
#: 1,650): the first minutes of footage a site calibrates a model on (5 minutes in all).
SCENE_FRAMES = 900


def scene_calibrated_recall(test: list[ClipScores], sigma: float) -> dict[str, float]:
    """What an operator gets who calibrates on the camera's own footage (`posewatch calibrate
    --all-clips`) instead of the training scene's validation clips:
    :func:`_calibrated_outcomes` fitted on the first :data:`SCENE_FRAMES` frames of every
    test clip, measured on the rest of the clips (smoothed with the history the service has).

    Raises:
        ValueError: a clip with an anomalous frame among its first frames.
    """
    if any(c.labels[:SCENE_FRAMES].any() for c in test):
        raise ValueError(f"the first {SCENE_FRAMES} frames of every clip must be normal")
    head = [ClipScores(c.name, c.frames[:SCENE_FRAMES], c.labels[:SCENE_FRAMES]) for c in test]
    rest = [(s[SCENE_FRAMES:], lab[SCENE_FRAMES:]) for s, lab in pooled(test, sigma, True)[2]]
    return _calibrated_outcomes(head, rest, sigma, "scene_")


#: Samplers the table can score (``--samplers``).
SAMPLERS = (GRU_NF, SNF_DEFAULT, CHECKPOINT_SAMPLER)


def fresh(cache: Path, ck_path: Path, key: tuple[str, str]) -> bool:
    """A cached row newer than its checkpoint whose alerts were counted by today's rule (the
    default row also needs its calibrated recall and the scene-calibrated one, added after
    the first caches were written)."""
    if not cache.exists() or cache.stat().st_mtime <= ck_path.stat().st_mtime:
        return False
    row = json.loads(cache.read_text())
    if row.get("alert_min_duration") != alert_frames(30.0):  # rows of 1-frame alerts
        return False
    if key != (DEFAULT_SCORER, CHECKPOINT_SAMPLER.name):
        return True
    return "calibrated_recall_1h" in row and "scene_calibrated_recall_1h" in row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scorer, sampler): mean and sample std over seeds (percent) of frame AUC
    (offline, causal), AP, mean clip AUC; mean event recall at 1 and 5 false alerts per
    camera-hour (percent). ``default`` marks what ``posewatch run`` serves with no scorer or
    sampler setting (:data:`DEFAULT_SCORER` with the checkpoint's own sampler, GRU-SNF)."""
    keys = sorted(
        {(r["scorer"], r["sampler"]) for r in rows}, key=lambda k: (SCORERS.index(k[0]), k)
    )
    out = []
    for k in keys:
        sel = [r for r in rows if (r["scorer"], r["sampler"]) == k]
        d: dict[str, Any] = {"scorer": k[0], "sampler": k[1]}
        d["default"] = k == (DEFAULT_SCORER, CHECKPOINT_SAMPLER.name)
        for f, name in [
            ("auc_offline", "auc_offline"),
            ("auc_causal", "auc_causal"),
            ("ap_offline", "ap_offline"),
            ("mean_clip_auc_offline", "clip_auc"),
        ]:
            v = [100 * r[f] for r in sel]
            d[f"{name}_mean"] = statistics.mean(v)
            d[f"{name}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
        d["recall_1h"] = statistics.mean(100 * r["recall"][0]["event_recall"] for r in sel)
        d["recall_5h"] = statistics.mean(100 * r["recall"][1]["event_recall"] for r in sel)
        d["seconds"] = statistics.mean(r["seconds"] for r in sel)
        d["seeds"] = len(sel)
        for rate, kind in itertools.product(("1h", "5h"), ("", "scene_")):
            # at thresholds calibrated as `posewatch calibrate` does (with --all-clips)
            for f in (f"{kind}calibrated_recall_{rate}", f"{kind}calibrated_false_per_hour_{rate}"):
                if all(f in r for r in sel):
                    d[f] = statistics.mean(r[f] * (100 if "recall" in f else 1) for r in sel)
        out.append(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", type=Path, default=Path("runs/anomaly_eval"))
    ap.add_argument(
        "--all-windows", action="store_true", help="train on every window (STG-NF's regime)"
    )
    ap.add_argument(
        "--scorers",
        nargs="+",
        default=list(SCORERS),
        help="scorers to evaluate (default: all)",
    )
    ap.add_argument(
        "--samplers",
        nargs="+",
        default=[GRU_NF.name, CHECKPOINT_SAMPLER.name],
        choices=[s.name for s in SAMPLERS],
        help="samplers of the sample-based scorers (default: GRU-NF and the sampler a "
        f"checkpoint trained now carries, {CHECKPOINT_SAMPLER.name}; {SNF_DEFAULT.name}: "
        "the same at temperature 1, the default before session 14)",
    )
    ap.add_argument(
        "--members",
        type=int,
        default=DEFAULT_MEMBERS,
        help="ensemble members per seed (seeds seed*N+r), as `posewatch train --members N`; "
        "each member is cached as its own checkpoint and joined by `posewatch ensemble`",
    )
    ap.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="K futures per window (all members)"
    )
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 leaves a core to another job)"
    )
    ap.add_argument("--sigma", type=float, default=9.5)
    ap.add_argument("--causal-sigma", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/anomaly_aihub2.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # training progress
    torch.set_num_threads(args.threads)
    clips = load_clips(args.data, "test")
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        suffix = "-all" if args.all_windows else ""
        paths = []
        for run in [seed * args.members + r for r in range(args.members)]:
            path = args.models / f"seed{run}{suffix}.pt"
            if not path.exists():
                run_training(
                    TrainRequest(
                        args.data,
                        path,
                        normal_only=not args.all_windows,
                        seed=run,
                        device="cpu",
                        members=1,
                        posture_flows=0,  # the ensemble gets its own flows below
                    )
                )
            paths.append(path)
        ck_path = paths[0]
        if args.members > 1:
            ck_path = args.models / f"seed{seed}{suffix}-m{args.members}.pt"
            newest = max(p.stat().st_mtime for p in paths)
            if not ck_path.exists() or ck_path.stat().st_mtime < newest:
                run_ensemble(EnsembleRequest(tuple(paths), ck_path, args.data))
        ck = load_checkpoint(ck_path)
        posture = posture_of(ck.model)
        if any(k in POSTURE_SCORERS for k in args.scorers) and (
            posture is None
            or not posture.cfg.stillness  # flows from before the term
            or _recipe(posture.cfg) != _recipe(PostureConfig())  # trained otherwise
        ):
            run_posture(PostureRequest(ck_path, PostureConfig(), seed))  # posture --seed SEED
            ck = load_checkpoint(ck_path)
        elif any(k in POSTURE_SCORERS for k in args.scorers) and not posture.cfg.speed_conditioned:  # fmt: skip
            # flows from before the speed-conditioned motion part: `posture --refit-stats`
            run_posture(PostureRequest(ck_path, PostureConfig(), seed, refit_stats=True))
            ck = load_checkpoint(ck_path)
        train_s = time.perf_counter() - t0
        members = ck.meta.get("ensemble_members", [])
        # The sample-based scorers of one sampler share one draw of futures (same scores as
        # separate runs with the same seed); "seconds" is that shared pass's.
        samplers = [s for s in SAMPLERS if s.name in args.samplers]
        for sampler_or_none, names in scoring_passes(args.scorers, samplers):
            sampler = sampler_or_none or GRU_NF
            caches = {
                k: ck_path.with_name(f"{ck_path.stem}.{k}.{sampler.name}.k{args.samples}.json")
                for k in names
            }

            if all(fresh(c, ck_path, (k, sampler.name)) for k, c in caches.items()):
                for k, c in caches.items():  # resumed run: these rows are done
                    d = json.loads(c.read_text())
                    d.update(seed=seed, members=members)
                    rows.append(d)
                    print(f"seed {seed} {k}/{sampler.name}: cached ({c})", flush=True)
                continue
            cfg = ScorerConfig(name=names[0], num_samples=args.samples, sampler=sampler, seed=seed)  # type: ignore[arg-type]
            many, secs, nw = score_split_many(ck, clips, cfg, names, 1, progress=False)
            for scorer in names:
                r = report(
                    scorer,
                    sampler.name if scorer in SAMPLE_SCORERS else "-",
                    many[scorer],
                    args.sigma,
                    args.causal_sigma,
                    30.0,
                    secs,
                    nw,
                )
                d = asdict(r)
                d["seed"] = seed
                d["members"] = members
                d["alert_min_duration"] = alert_frames(30.0)  # frames; report's rule
                if (scorer, sampler.name) == (DEFAULT_SCORER, CHECKPOINT_SAMPLER.name):
                    d.update(calibrated_recall(ck, args.data, replace(cfg, name=scorer), many[scorer], args.causal_sigma))  # type: ignore[arg-type]  # fmt: skip
                    d.update(scene_calibrated_recall(many[scorer], args.causal_sigma))
                d["train_seconds"] = train_s
                rows.append(d)
                caches[scorer].write_text(json.dumps(d, default=float))
                print(
                    f"seed {seed} {scorer}/{d['sampler']}: AUC off {100 * r.auc_offline:.1f} causal {100 * r.auc_causal:.1f} ({secs:.0f} s)",
                    flush=True,
                )
    summary = summarise(rows)
    head = f"{'scorer':<8}{'sampler':<10}{'AUC off':>14}{'AUC causal':>14}{'AP off':>14}{'clip AUC':>14}{'R@1/h':>8}{'R@5/h':>8}{'s/split':>9}"
    print(head)
    print("-" * len(head))
    for d in summary:
        print(
            f"{d['scorer']:<8}{d['sampler']:<10}"
            f"{d['auc_offline_mean']:>8.1f} ±{d['auc_offline_std']:>4.1f}"
            f"{d['auc_causal_mean']:>8.1f} ±{d['auc_causal_std']:>4.1f}"
            f"{d['ap_offline_mean']:>8.1f} ±{d['ap_offline_std']:>4.1f}"
            f"{d['clip_auc_mean']:>8.1f} ±{d['clip_auc_std']:>4.1f}"
            f"{d['recall_1h']:>8.0f}{d['recall_5h']:>8.0f}{d['seconds']:>9.0f}"
            + ("  <- default" if d["default"] else "")
        )
        if "calibrated_recall_1h" in d:
            print(
                f"{'':18}at the calibrated threshold: events {d['calibrated_recall_1h']:.0f}% "
                f"({d['calibrated_false_per_hour_1h']:.1f} false/h on test) for 1/h, "
                f"{d['calibrated_recall_5h']:.0f}% ({d['calibrated_false_per_hour_5h']:.1f}/h) for 5/h"
            )
        if "scene_calibrated_recall_1h" in d:
            print(
                f"{'':18}calibrated on the test scene's first {SCENE_FRAMES} frames per clip: "
                f"events {d['scene_calibrated_recall_1h']:.0f}% "
                f"({d['scene_calibrated_false_per_hour_1h']:.1f} false/h on the rest) for 1/h, "
                f"{d['scene_calibrated_recall_5h']:.0f}% "
                f"({d['scene_calibrated_false_per_hour_5h']:.1f}/h) for 5/h"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    regime = (
        "all train windows (unsupervised, STG-NF's)"
        if args.all_windows
        else "normal windows of train (train labels)"
    )
    args.out.write_text(
        json.dumps(
            {
                "training_regime": regime,
                "members": args.members,
                "samples": args.samples,
                "sigma_offline": args.sigma,
                "sigma_causal": args.causal_sigma,
                "rows": summary,
                "seed_rows": rows,
            },
            indent=2,
            default=float,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
