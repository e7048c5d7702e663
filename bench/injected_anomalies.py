"""Injected anomalies on real normal windows: AUC-ROC per kind, on two window sets.

For a checkpoint, every kind of :mod:`forecasting.injection` is injected into (a) the
normal windows of the checkpoint's validation clips (AIHub2 train) and (b) the normal
windows of the AIHub2 test split (injection needs no anomaly labels), stride 9; the
motion kinds (``run3x``, ``freeze``, ``reverse``) only into windows whose person moves
(faster than the set's median and than a slow walk,
:data:`forecasting.injection.WALKING_SPEED`; the median alone until session 27). AUC-ROC separates each anomalous copy from its untouched
window. Each scorer is run with the checkpoint's own sampler (what the service serves)
and K = 42 (``gru-snf-t0.8`` for a checkpoint trained now), optionally at other sampler
temperatures (``--temperature``: the scale of the flow's base noise, 1 = the model's own
distribution).

Prints a table, writes ``bench/results/injected_anomalies.json``.

Usage::

    .venv/bin/python bench/injected_anomalies.py --model runs/anomaly_eval/seed0-m7.pt \\
        [--scorers minhde fused] [--temperature 1 0.6] [--test-auc]

``--test-auc`` also scores the whole AIHub2 test split (frame AUC offline/causal, as
``bench/anomaly_eval.py``) for each setting, to see what a setting chosen on the injected
kinds costs or gains on real anomalies (report only: choose on validation, never on test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER, DEFAULT_SAMPLES
from forecasting.detection_metrics import roc_auc
from forecasting.injection import KINDS, injected
from forecasting.scoring import score_windows
from forecasting.windows import Windows
from pipelines.clip_scoring import score_split_many
from pipelines.offline.evaluation import load_clips, normal_window_sets, report
from pipelines.serving import scorer_config


def window_sets(data: Path, ck: Any, stride: int) -> dict[str, Windows]:
    """``val``: normal windows of the checkpoint's validation clips; ``test``: normal
    windows of the test split."""
    sets = normal_window_sets(data, ck.meta.get("validation_clips", []), ck.window_config, stride)
    return {"val": sets["validation"], "test": sets["test"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--scorers", nargs="+", default=["auto"], help="auto: the service's default")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=None,
        help="sampler temperatures (default: the checkpoint's own sampler as it is)",
    )
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    ap.add_argument("--stride", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--min-speed",
        type=float,
        default=None,
        help="motion kinds: windows whose person moves faster than this (person sizes per "
        "frame) instead of faster than the set's median and a slow walk (0.005)",
    )
    ap.add_argument("--test-auc", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/injected_anomalies.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.model)
    t_obs = ck.window_config.t_obs
    sets = window_sets(args.data, ck, args.stride)
    clips = load_clips(args.data, "test") if args.test_auc else []
    rows: list[dict[str, Any]] = []
    for scorer in args.scorers:
        for tau in args.temperature or [None]:
            sampler = DEFAULT_SAMPLER if tau is None else f"{DEFAULT_SAMPLER}-t{tau:g}"
            cfg = scorer_config(ck, scorer, sampler, args.samples)
            row: dict[str, Any] = {
                "scorer": cfg.name,
                "sampler": cfg.sampler.name,
                "temperature": cfg.sampler.temperature,
            }
            t0 = time.perf_counter()
            for name, w0 in sets.items():
                normal = score_windows(ck.model, w0.poses, w0.mask, w0.visible, cfg).score
                for kind in args.kinds:
                    keep, w, bad = injected(w0, kind, t_obs, args.min_speed)
                    if keep.sum() < 10:
                        print(f"{name} {kind}: only {keep.sum()} windows move; skipped")
                        row[f"{name}.{kind}"] = float("nan")
                        continue
                    n = normal[keep]
                    a = score_windows(ck.model, bad, w.mask, w.visible, cfg).score
                    y = np.r_[np.zeros(len(n)), np.ones(len(a))]
                    row[f"{name}.{kind}"] = roc_auc(y, np.r_[n, a])
                    row[f"{name}.{kind}.windows"] = len(w)
                row[f"{name}.windows"] = len(w0)
            row["seconds_injected"] = time.perf_counter() - t0
            if args.test_auc:
                many, secs, nw = score_split_many(ck, clips, cfg, (cfg.name,), 1, progress=False)
                rep = report(cfg.name, cfg.sampler.name, many[cfg.name], 9.5, 6.0, 30.0, secs, nw)
                row.update(
                    auc_offline=rep.auc_offline, auc_causal=rep.auc_causal, seconds_test=secs
                )
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)  # fmt: skip
    head = f"{'scorer':<8}{'temp':>5}{'set':>6}" + "".join(f"{k:>9}" for k in args.kinds)
    head += f"{'AUC off':>9}{'AUC cau':>9}" if args.test_auc else ""
    print(head)
    print("-" * len(head))
    for r in rows:
        for name in sets:
            line = f"{r['scorer']:<8}{r['temperature']:>5g}{name:>6}"
            line += "".join(f"{r[f'{name}.{k}']:>9.3f}" for k in args.kinds)
            if args.test_auc and name == "test":
                line += f"{100 * r['auc_offline']:>9.2f}{100 * r['auc_causal']:>9.2f}"
            print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
