"""Cold start: the fused score's motion part measured per speed or pooled, on the same models.

For each N (minutes) and seed, the cold-start recipe learns from the first N minutes of
AIHub2 train's normal footage exactly as ``bench/cold_start_eval.py`` runs it (the scene
model saved under ``--save-dir``, reused when there), with the posture flows' normal
statistics fitted speed-conditioned (session 25's, ``PostureConfig.speed_conditioned``)
**and** pooled, on the same held-out windows. From one draw of futures on AIHub2 test
(:func:`bench.fusion_rules.rule_test_auc`) it reports the frame AUC-ROC (offline, causal)
of:

- ``cond``: ``z_m`` against the normal mean at the window's observed speed, the residuals'
  spread, ``+ z_p + e`` (the fused score with speed-conditioned statistics);
- ``pooled``: ``z_m`` against the pooled mean and spread ``+ z_p + e``;
- ``cond_poolstd``: the conditional mean with the pooled spread;
- ``half``: half the pooled ``z_m`` ``+ z_p + e``; ``post``: ``z_p + e`` (no motion part);
- ``m``: raw ``minhde``; ``p``: the posture part alone.

With ``--product`` the variant the learner does not serve is written as a checkpoint of
its own (the same forecaster and flows), calibrated on the learner's held-out footage as
the learner calibrates, and evaluated as ``bench/cold_start_eval.py`` evaluates: the
figures that variant would have as the cold-start default.

Prints one JSON line per (N, seed) and a table, writes ``--out``.

Usage::

    .venv/bin/python bench/cold_start_motion_stats.py --minutes 3 10 --seeds 0 1 2 --product
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cold_start_eval import FPS, learn, normal_stream
from bench.fusion_rules import rule_test_auc
from bench.motion_scale import pm_motion_z, raw_parts
from forecasting.calibration import Calibration
from forecasting.checkpoint import attach_posture, load_checkpoint
from forecasting.posture import PostureModel
from forecasting.scoring import posture_of
from forecasting.train import ERROR_SCALE_WINDOWS, fit_fused_stats
from forecasting.windows import WindowConfig
from pipelines.clip_scoring import score_split_many
from pipelines.config import PosewatchConfig
from pipelines.learning import LearnSettings, SceneLearner
from pipelines.offline.evaluation import load_clips, report
from pipelines.serving import scorer_config

NAMES = ("cond", "pooled", "cond_poolstd", "half", "post", "m", "p")
SPEED_BUFFERS = {"motion_slope", "speed_mean", "speed_lo", "speed_hi"}


def variants(served: PostureModel, other: PostureModel) -> tuple[PostureModel, PostureModel]:
    """``(conditioned, pooled)`` of the learner's posture model and its refitted twin."""
    return (served, other) if served.cfg.speed_conditioned else (other, served)


def one(frames: list[Any], base: LearnSettings, n: float, seed: int, args: argparse.Namespace, clips: list[Any]) -> dict[str, Any]:  # fmt: skip
    """Learn (or reuse) the scene model of ``frames`` (the first ``n`` minutes) for
    ``seed``, fit its twin's statistics and score the variants on ``clips`` (AIHub2 test):
    one JSON row (AUCs in percent, offline and causal)."""
    t0 = time.perf_counter()
    folder = args.save_dir / f"n{n:g}-s{seed}"
    s = replace(base, seconds=math.inf, seed=seed, save_dir=folder)
    ck = learn(frames, s).checkpoint
    learn_s = time.perf_counter() - t0
    learner = SceneLearner("aihub2", s)  # the learner's own split of the same footage
    train_clip, hold_clip, _ = learner._split(frames)
    _, tr, va = learner._windows(train_clip, hold_clip, WindowConfig(), len(frames))
    served = posture_of(ck.model)
    assert isinstance(served, PostureModel)
    twin = PostureModel(replace(served.cfg, speed_conditioned=not served.cfg.speed_conditioned))
    own = twin.state_dict().keys()
    missing, _ = twin.load_state_dict(
        {k: v for k, v in served.state_dict().items() if k in own}, strict=False
    )
    assert set(missing) <= SPEED_BUFFERS  # the same flows; the speed line is fitted below
    twin.eval()
    ref = va if len(va) >= 2 else tr  # as the learner's fit_fused_stats chooses
    fit_fused_stats(ck.model, twin, ref, seed)
    cond, pool = variants(served, twin)
    row: dict[str, Any] = {
        "minutes": n,
        "seed": seed,
        "learn_seconds": learn_s,
        "served": "cond" if served.cfg.speed_conditioned else "pooled",
        "stats_windows": min(len(ref), ERROR_SCALE_WINDOWS),
        "slope": float(cond.motion_slope),
        "cond_std": float(cond.motion_std),
        "pooled_std": float(pool.motion_std),
    }
    cfg = scorer_config(ck, "fused", s.sampler, s.samples)

    def scores(model: Any, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, c: Any) -> dict[str, np.ndarray]:  # fmt: skip
        d = raw_parts(model, poses, mask, visible, c)
        zc = pm_motion_z(cond, d["r"], poses, mask, visible, model)
        zp = pm_motion_z(pool, d["r"], poses, mask, visible, model)
        rest = d["p"] + d["e"]
        scale = float(cond.motion_std) / float(pool.motion_std)
        return {
            "cond": zc + rest,
            "pooled": zp + rest,
            "cond_poolstd": zc * scale + rest,
            "half": 0.5 * zp + rest,
            "post": rest,
            "m": d["r"],
            "p": d["p"],
        }

    auc = rule_test_auc(ck, clips, cfg, scores, list(NAMES))
    row["auc"] = {k: [100 * a for a in v] for k, v in auc.items()}
    if args.product:  # the variant not served, as the learner would have served it
        path = folder / "other.pt"
        shutil.copy(folder / "aihub2.pt", path)
        attach_posture(path, twin)
        threshold, _ = learner._calibrate(path, hold_clip, FPS)
        other = load_checkpoint(path)
        oc = scorer_config(other, s.scorer, s.sampler, s.samples)
        many, secs, nw = score_split_many(other, clips, oc, (oc.name,), 1, progress=False)
        cal = Calibration.from_record(other.calibration)
        assert cal is not None
        r = report(oc.name, oc.sampler.name, many[oc.name], 9.5, s.sigma, FPS, secs, nw, cal, cal.min_duration)  # fmt: skip
        row["other_product"] = {**asdict(r), "threshold": threshold}
    row["seconds"] = time.perf_counter() - t0
    print(json.dumps(row, default=float), flush=True)
    return row


def _sd(v: list[float]) -> float:
    return statistics.stdev(v) if len(v) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--product", action="store_true", help="evaluate the other variant too")
    ap.add_argument("--save-dir", type=Path, default=Path("runs/cold"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/cold_start_motion_stats.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    default = PosewatchConfig.model_validate({"cameras": {"aihub2": {"source": "x.mp4"}}})
    base = replace(LearnSettings.from_config(default), store=None, save_dir=None)
    clips = load_clips(args.data, "test")
    rows = []
    for n in args.minutes:
        frames = normal_stream(args.data, n)
        rows += [one(frames, base, n, seed, args, clips) for seed in args.seeds]
    print(f"\n{'minutes':>8} {'variant':<14}{'AUC offline (seeds)':<28}{'mean':>12}{'causal':>14}")
    for n in args.minutes:
        sel = [r for r in rows if r["minutes"] == n]
        for k in NAMES:
            off = [r["auc"][k][0] for r in sel]
            cau = [r["auc"][k][1] for r in sel]
            seeds = " / ".join(f"{v:.1f}" for v in off)
            print(f"{n:>8g} {k:<14}{seeds:<28}{statistics.mean(off):>6.1f} ± {_sd(off):>3.1f}"
                  f"{statistics.mean(cau):>8.1f} ± {_sd(cau):>3.1f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
