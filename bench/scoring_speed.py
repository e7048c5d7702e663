"""Scoring speed in one run: posewatch's default scorer as the service runs it, today's exact
path, and STG-NF's scoring loop, on the same AIHub2 test person-frames and thread count.

Input: the first ``--frames`` frames of every AIHub2 test clip (0: all), one camera per clip.

- ``exact``: the member-by-member path (``forecaster.exact: true``: each ensemble member
  rolled out through ``nn.GRU`` and the flow modules, one model call per camera frame, as
  the service ran before the stacked path);
- ``stacked``: every member in one batched call, the frames of a chunk in one call, every
  window drawn with all K futures (same scores as ``exact``);
- ``default``: ``stacked`` with early stop (``forecaster.early_stop_margin``), the default;
- ``flows1x1``: ``default`` with the posture flows (``fused``, the default scorer) evaluated
  one by one through their own modules, as before :class:`forecasting.posture.StackedFlows`
  (``exact`` does so too);
- ``fused-issue``: ``default`` with the fused score as issue 22 found it (no stillness term,
  no upright turn of the posture flows' input, the motion part standardised by its pooled
  normal statistics, GRU-SNF at temperature 1; its normal statistics refitted for that in
  memory as ``posewatch posture`` fits them), at its own threshold (fitted on the validation
  clips as ``posewatch calibrate`` fits the default's; ``--threshold`` sets the others') and
  early stop margin (1.5 minhde units over its motion part's normal spread): the
  reference of that issue's speed bar (the new default no slower than the ``fused`` of then,
  each at the threshold its operator would run it at; early stop's savings depend on it). The other
  paths draw with the sampler a checkpoint trained now carries (``gru-snf-t0.8``) whatever
  the checkpoint was saved with;
- ``stg-nf``: STG-NF's GraphGlow over its 24-frame windows (stride 1) of the same frames,
  window normalisation included (``bench/stg_nf.py``; trained for the run, ``--stg-epochs``;
  the speed does not depend on how well it is trained).

The posewatch paths run the service's score stage (:class:`pipelines.score_stage.ScoreStage`:
its stride, causal smoothing, frame seeding and alert lifecycles) with the checkpoint's
calibrated threshold (``fused-issue``: its own), frames fed ``--chunk`` at a time (one Kafka poll's worth). Person-frames
per second = persons in the frames fed / seconds. FLOPs per person-frame: the matmul FLOPs
(``torch.utils.flop_counter``) of a counting pass over the first ``--flop-frames`` frames of
each clip; GFLOP/s achieved = those FLOPs per person-frame x person-frames/s, against a
1024 x 1024 fp32 matmul timed in the same run. Alerts (``new`` episodes) of ``default`` and
``stacked`` are compared with ``exact``'s.

Usage::

    .venv/bin/python bench/scoring_speed.py --model CKPT [--frames 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stg_nf import SEG_LEN, load_segments, normalise, train_model
from detector.datasets import load_split
from detector.pose import PoseFrame, frames_from_tracks
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLES
from forecasting.posture import PostureModel
from forecasting.scoring import posture_of
from forecasting.snf import CHECKPOINT_SAMPLER, SNF_DEFAULT
from forecasting.train import fit_fused_stats
from pipelines.config import PosewatchConfig
from pipelines.model_provider import CheckpointProvider
from pipelines.offline.evaluation import (
    CalibrateRequest,
    fit_calibration,
    normal_window_sets,
)
from pipelines.score_stage import ScoreStage

ONE_BY_ONE = "posture_flows_one_by_one"  # not a config field: the flows' path before session 11
AS_AT_ISSUE = "fused_as_at_issue_22"  # not a config field: no stillness, upright, speed
PATHS = {
    "exact": {"exact": True, "early_stop_margin": None, ONE_BY_ONE: True},
    "stacked": {"exact": False, "early_stop_margin": None},
    "flows1x1": {ONE_BY_ONE: True},
    "fused-issue": {AS_AT_ISSUE: True, "sampler": SNF_DEFAULT.name},
    "default": {},
}


THRESHOLD: float | None = None  # --threshold (default: the checkpoint's calibration)
#: fused-issue's posture flows, threshold and early stop margin (fused units)
ISSUE: tuple[PostureModel, float, float] | None = None


def as_at_issue(model: Path, data: Path, samples: int) -> tuple[PostureModel, float, float]:
    """``model``'s posture flows with the fused score as issue 22 found it (no stillness term,
    no upright turn, the motion part's pooled normal statistics: refitted here on the
    validation clips' normal windows as ``posewatch posture --refit-stats`` fits them), the
    threshold ``posewatch calibrate`` fits for that score (1 false alert per camera-hour),
    and early stop's margin then (1.5 minhde units over the motion part's normal spread)."""
    ck = load_checkpoint(model)
    posture = posture_of(ck.model)
    assert posture is not None, f"{model}: no posture flows, so no fused score"
    posture.cfg = replace(posture.cfg, stillness=True, speed_conditioned=False, upright=0.0)
    tcfg = ck.meta.get("train_config") or {}
    val = ck.meta.get("validation_clips") or []
    ref = normal_window_sets(data, val, ck.window_config, tcfg.get("stride", 1), test=False)
    fit_fused_stats(ck.model, posture, ref["validation"], tcfg.get("seed", 0))
    posture.cfg = replace(posture.cfg, stillness=False)
    req = CalibrateRequest(model, data, scorer="fused", sampler=SNF_DEFAULT.name, samples=samples, progress=False)  # fmt: skip
    fit = fit_calibration(ck, req)[0]
    return posture, fit.threshold, 1.5 / float(posture.motion_std)


def config(model: Path, threshold: float | None = None, **forecaster: Any) -> PosewatchConfig:
    return PosewatchConfig.model_validate(
        {
            "cameras": {"none": {"source": "unused.mp4", "enabled": False}},
            "forecaster": {"checkpoint": str(model.resolve()), **forecaster},
            "alerting": {"threshold": THRESHOLD if threshold is None else threshold},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": None},
        }
    )


def interleave(streams: list[list[PoseFrame]]) -> list[PoseFrame]:
    """Frames of all cameras in time order (as a multi-camera topic delivers them)."""
    out = [f for s in streams for f in s]
    out.sort(key=lambda f: (f.frame_index, f.camera))
    return out


def run_path(model: Path, frames: list[PoseFrame], chunk: int, **forecaster: Any) -> dict[str, Any]:
    """Feed the frames through a fresh score stage; returns seconds, windows and alerts."""
    if forecaster.pop(ONE_BY_ONE, False):  # the posture flows' path before StackedFlows
        with patch.object(PostureModel, "flow_nll", PostureModel.flow_nll_one_by_one):
            return run_path(model, frames, chunk, **forecaster)
    as_at_issue = forecaster.pop(AS_AT_ISSUE, False)
    forecaster.setdefault("sampler", CHECKPOINT_SAMPLER.name)  # what a model trained now draws
    own = None
    if as_at_issue:
        assert ISSUE is not None
        own = ISSUE[1]
        forecaster["early_stop_margin"] = ISSUE[2]
    cfg = config(model, own, **forecaster)
    provider = CheckpointProvider(cfg, warmup=not as_at_issue)
    if as_at_issue:
        assert ISSUE is not None
        posture = posture_of(provider.model.checkpoint.model)
        assert posture is not None
        posture.load_state_dict(ISSUE[0].state_dict())
        posture.cfg = ISSUE[0].cfg
        provider.model.scorer.warmup()  # after the swap: no cache rebuilt in the timed loop
    stage = ScoreStage(provider, cfg.alerting, cfg.forecaster.seeding)
    windows, alerts, scores = 0, [], {}
    t0 = time.perf_counter()
    for i in range(0, len(frames), chunk):
        for out in stage.process(frames[i : i + chunk]):
            windows += len(out.scores)
            alerts += [(a.camera, a.track_id, a.frame_index) for a in out.alerts if a.type == "new"]
            scores.update({(s.camera, s.track_id, s.frame_index): s.smoothed for s in out.scores})
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "windows": windows,
        "alerts": alerts,
        "scores": scores,
        "threshold": provider.model.threshold,
    }


def count_flops(fn: Any) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="calibrated default checkpoint")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--frames", type=int, default=600, help="first frames of each clip (0: all)")
    ap.add_argument("--flop-frames", type=int, default=120)
    ap.add_argument("--chunk", type=int, default=32, help="frames per score-stage call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stg-epochs", type=int, default=1)
    ap.add_argument(
        "--threshold", type=float, help="default: the checkpoint's calibration (not fused-issue's)"
    )
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/scoring_speed.json"))
    args = ap.parse_args()
    global THRESHOLD, ISSUE
    THRESHOLD = args.threshold
    if "fused-issue" in args.paths:
        ISSUE = as_at_issue(args.model, args.data, DEFAULT_SAMPLES)
        print(
            f"fused-issue: threshold {ISSUE[1]:.3f}, early stop margin {ISSUE[2]:.3f}", flush=True
        )
    torch.set_num_threads(args.threads)
    limit = args.frames or 10**9
    clips = load_split(args.data, "test")
    streams = [frames_from_tracks(c.tracks, c.name, (1920, 1080)) for c in clips]
    frames = interleave([[f for f in s if f.frame_index < limit] for s in streams])
    person_frames = sum(len(f.persons) for f in frames)
    few = interleave([[f for f in s if f.frame_index < args.flop_frames] for s in streams])
    few_pf = sum(len(f.persons) for f in few)
    print(
        f"{len(clips)} clips, {len(frames)} frames, {person_frames} person-frames; "
        f"{args.threads} torch threads; {os.cpu_count()} cores",
        flush=True,
    )
    gflops_mm = matmul_gflops()
    rows: dict[str, dict[str, Any]] = {}
    ref: dict[str, Any] | None = None
    for name in args.paths:
        r = run_path(args.model, frames, args.chunk, **dict(PATHS[name]))
        flops = count_flops(
            lambda name=name: run_path(args.model, few, args.chunk, **dict(PATHS[name]))
        )
        row = {
            "person_frames_per_s": person_frames / r["seconds"],
            "seconds": r["seconds"],
            "windows": r["windows"],
            "new_alerts": len(r["alerts"]),
            "flops_per_person_frame": flops / few_pf,
            "threshold": r["threshold"],
        }
        row["gflops"] = row["flops_per_person_frame"] * row["person_frames_per_s"] / 1e9
        if name == "exact":
            ref = r
        elif ref is not None:
            a, b = set(ref["alerts"]), set(r["alerts"])
            row["alerts_only_here"] = len(b - a)
            row["alerts_only_in_exact"] = len(a - b)
            diff = [abs(r["scores"][k] - v) for k, v in ref["scores"].items() if k in r["scores"]]
            row["max_smoothed_score_diff"] = float(max(diff)) if diff else 0.0
            above = [
                (v > r["threshold"]) != (r["scores"][k] > r["threshold"])
                for k, v in ref["scores"].items()
            ]
            row["smoothed_scores_across_threshold"] = int(sum(above))
        rows[name] = row
        print(f"{name}: {row['person_frames_per_s']:.1f} person-frames/s", flush=True)
    # STG-NF on its windows of the same frames.
    train, _ = load_segments(args.data, "train", 6)
    glow = train_model(train.data, 0, args.stg_epochs).eval()
    test, _ = load_segments(args.data, "test", 1)
    keep = test.start + SEG_LEN <= limit
    data = test.data[keep]

    def stg() -> None:
        with torch.no_grad():
            x = torch.from_numpy(normalise(data))
            torch.cat([glow(b) for b in x.split(4096)])

    stg()  # warm-up
    t0 = time.perf_counter()
    stg()
    secs = time.perf_counter() - t0
    few_keep = test.start + SEG_LEN <= args.flop_frames
    n_few = int(few_keep.sum())
    stg_flops = count_flops(lambda: glow(torch.from_numpy(normalise(test.data[few_keep])))) if n_few else 0.0  # fmt: skip
    rows["stg-nf"] = {
        "person_frames_per_s": person_frames / secs,
        "seconds": secs,
        "windows": int(keep.sum()),
        "flops_per_person_frame": stg_flops / max(few_pf, 1),
    }
    rows["stg-nf"]["gflops"] = (
        rows["stg-nf"]["flops_per_person_frame"] * rows["stg-nf"]["person_frames_per_s"] / 1e9
    )
    default = rows.get("default") or rows[args.paths[-1]]
    result = {
        "device": "cpu",
        "cores": os.cpu_count(),
        "threads": args.threads,
        "frames_per_clip": args.frames,
        "person_frames": person_frames,
        "chunk_frames": args.chunk,
        "matmul_gflops": gflops_mm,
        "speedup_vs_exact": (
            default["person_frames_per_s"] / rows["exact"]["person_frames_per_s"]
            if "exact" in rows
            else None
        ),
        "ratio_vs_stg_nf": default["person_frames_per_s"] / rows["stg-nf"]["person_frames_per_s"],
        "paths": rows,
    }
    head = f"{'path':<9}{'pf/s':>10}{'s':>8}{'windows':>9}{'MFLOP/pf':>10}{'GFLOP/s':>9}{'% mm':>6}{'alerts':>8}{'+/-':>8}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        pm = f"{r.get('alerts_only_here', '-')}/{r.get('alerts_only_in_exact', '-')}"
        print(
            f"{name:<9}{r['person_frames_per_s']:>10.1f}{r['seconds']:>8.1f}{r['windows']:>9}"
            f"{r['flops_per_person_frame'] / 1e6:>10.1f}{r['gflops']:>9.1f}"
            f"{100 * r['gflops'] / gflops_mm:>6.0f}{r.get('new_alerts', '-'):>8}{pm:>8}"
        )
    print(
        f"matmul {gflops_mm:.1f} GFLOP/s; default vs exact x{result['speedup_vs_exact'] or 0:.1f}, "
        f"vs STG-NF x{result['ratio_vs_stg_nf']:.2f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
