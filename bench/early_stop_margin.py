"""Early stop's margin for the default scorer, in the score's own units: what each margin
costs in alerts and AUC-ROC and saves in futures drawn.

Live scoring draws a window's futures member stage by member stage and stops once the
best-of-K score so far is below ``threshold - margin`` (:func:`forecasting.scoring.
_early_stop_scores`); a stopped window reports that upper bound. This scores the model's
validation clips and the AIHub2 test split once with all K futures and once per margin, at
the thresholds ``posewatch calibrate`` fits on the validation clips for 1 and for 5 false
alerts per camera-hour (unless ``--threshold`` sets the first; the second, lower one puts
more windows near the bound), and prints per set and margin: windows whose reported score
rose (stopped with a bound above their full score: a lower bound on the windows stopped),
seconds (one pass each, same process: compare within a run; the first pass also pays the
process's warm-up), alert episodes that appear or vanish against all K (label-free), and on
test the AUC-ROC offline / causal. The margin the service uses
(``forecaster.early_stop_margin: auto``, :data:`forecasting.defaults.EARLY_STOP_MARGINS`)
and, for ``fused``, the one it used before session 26 (1.5 minhde units over the motion
part's normal spread) are among the rows.

Usage::

    .venv/bin/python bench/early_stop_margin.py --model CKPT --margins 6.9 4 3 2

``--scorer minhde`` measures the motion-only scorer (what ``bench/anomaly_eval.py
--early-stop-margin`` measured until session 27).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.anomaly_eval import episodes
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER, DEFAULT_SAMPLES, EARLY_STOP_MARGINS
from forecasting.scoring import posture_of
from pipelines.clip_scoring import ClipScores, calibrate_on_clips, score_split_many
from pipelines.offline.evaluation import alert_frames, load_clips, report
from pipelines.serving import scorer_config

SIGMA_OFFLINE, SIGMA_CAUSAL, FPS = 9.5, 6.0, 30.0


def raw(clips: list[ClipScores]) -> np.ndarray:
    """Every window score of ``clips``, persons concatenated (NaN where none)."""
    return np.concatenate([x for c in clips for x in c.persons.values()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--margins", type=float, nargs="+", default=[4.0, 3.0, 2.0])
    ap.add_argument("--threshold", type=float, help="default: calibrated on validation, 1/h")
    ap.add_argument(
        "--scorer", default="auto", help="one that stops early (auto: the service's default)"
    )
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/early_stop_margin.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.model)
    cfg = replace(scorer_config(ck, args.scorer, DEFAULT_SAMPLER, args.samples), seed=args.seed)
    name = cfg.name
    if name not in EARLY_STOP_MARGINS:
        raise SystemExit(f"--scorer {name} never stops early; choose from {', '.join(EARLY_STOP_MARGINS)}")  # fmt: skip
    val_names = set(ck.meta.get("validation_clips") or [])
    sets = {
        "validation": [c for c in load_clips(args.data, "train") if c.name in val_names],
        "test": load_clips(args.data, "test"),
    }
    full: dict[str, tuple[list[ClipScores], float]] = {}
    for k, clips in sets.items():
        many, secs, _ = score_split_many(ck, clips, cfg, (name,), 1, progress=False)
        full[k] = (many[name], secs)
    val, frames = full["validation"][0], alert_frames(FPS)
    fit = {r: calibrate_on_clips(val, SIGMA_CAUSAL, FPS, r, frames).threshold for r in (1.0, 5.0)}
    thr = fit[1.0] if args.threshold is None else args.threshold
    thr_low = fit[5.0]
    if thr_low >= thr:
        raise SystemExit(f"the 5/h threshold {thr_low:.3f} is not below {thr:.3f}")
    today = EARLY_STOP_MARGINS[name]
    posture = posture_of(ck.model)
    before = 1.5 / float(posture.motion_std) if name == "fused" and posture is not None else today
    margins = sorted({today, round(before, 3), *args.margins}, reverse=True)
    rows: list[dict[str, Any]] = []
    head = f"{'set':<11}{'margin':>7}{'stopped':>9}{'s':>7}{'x':>6}{'ep':>5}{'+ep':>5}{'-ep':>5}{'ep 5/h':>8}{'+5/h':>6}{'-5/h':>6}{'AUC off':>9}{'causal':>8}"  # fmt: skip
    print(f"scorer {name}, thresholds {thr:.3f} and (5/h) {thr_low:.3f}; margin auto {today:.3f}, before {before:.3f}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for k, clips in sets.items():
        ref, ref_s = full[k]
        base = raw(ref)
        ok = np.isfinite(base)
        for m in [None, *margins]:
            if m is None:
                got, secs = ref, ref_s
                got_low = ref
            else:
                t0 = time.perf_counter()
                got = score_split_many(ck, clips, replace(cfg, stop_below=thr - m), (name,), 1, progress=False)[0][name]  # fmt: skip
                secs = time.perf_counter() - t0
                got_low = score_split_many(ck, clips, replace(cfg, stop_below=thr_low - m), (name,), 1, progress=False)[0][name]  # fmt: skip
            a, b = episodes(ref, thr, SIGMA_CAUSAL, 15), episodes(got, thr, SIGMA_CAUSAL, 15)
            al, bl = (episodes(ref, thr_low, SIGMA_CAUSAL, 15), episodes(got_low, thr_low, SIGMA_CAUSAL, 15))  # fmt: skip
            row: dict[str, Any] = {
                "set": k,
                "margin": m,
                "auto": m == today,
                "before_session_26": m is not None and abs(m - before) < 1e-3,
                "threshold": thr,
                "low_threshold": thr_low,
                "windows": int(ok.sum()),
                "windows_stopped": int(np.sum(raw(got)[ok] > base[ok] + 1e-6)),
                "seconds": secs,
                "speedup_vs_full": ref_s / secs,
                "episodes": len(b),
                "episodes_only_early": len(b - a),
                "episodes_only_full": len(a - b),
                "low_episodes": len(bl),
                "low_episodes_only_early": len(bl - al),
                "low_episodes_only_full": len(al - bl),
            }
            auc = ""
            if k == "test":
                r = asdict(report(name, cfg.sampler.name, got, SIGMA_OFFLINE, SIGMA_CAUSAL, FPS, secs, row["windows"]))  # fmt: skip
                row.update(auc_offline=r["auc_offline"], auc_causal=r["auc_causal"])
                auc = f"{100 * r['auc_offline']:>9.2f}{100 * r['auc_causal']:>8.2f}"
            rows.append(row)
            print(
                f"{k:<11}{'all K' if m is None else f'{m:.2f}':>7}"
                f"{100 * row['windows_stopped'] / row['windows']:>8.0f}%{secs:>7.0f}"
                f"{row['speedup_vs_full']:>6.2f}{len(b):>5}{len(b - a):>5}{len(a - b):>5}"
                f"{len(bl):>8}{len(bl - al):>6}{len(al - bl):>6}{auc}",
                flush=True,
            )
    out = {"model": str(args.model), "scorer": name, "auto": today, "before": before, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
