"""Frame AUC and the event recall an operator gets, for given checkpoints, one seed each.

For each checkpoint: the default scorer (``fused``, the checkpoint's sampler, K = 42) on
AIHub2 test as ``bench/anomaly_eval.py`` scores it (frame AUC offline and causal, AP), and
the share of test anomaly events alerted at thresholds fitted as ``posewatch calibrate``
fits them for 1 and 5 false alerts per camera-hour, on the checkpoint's validation clips
(``calibrated_*``) and on the first 5 minutes of the test clips (``scene_calibrated_*``),
with the false alerts per hour each threshold gives on the test clips' normal frames
(:func:`bench.anomaly_eval.calibrated_recall`, :func:`bench.anomaly_eval.scene_calibrated_recall`).
``bench/anomaly_eval.py`` does the same for the three-seed table, training what it lacks;
this one takes checkpoints as they are (e.g. the CI-sized model and a variant of it).

Usage::

    .venv/bin/python bench/calibrated_recall.py --out bench/results/calibrated_recall.json \\
        runs/ci/seed0-m3.pt [more checkpoints]

Prints one JSON line per checkpoint, writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.anomaly_eval import calibrated_recall, scene_calibrated_recall
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLES
from forecasting.scoring import ScorerConfig
from forecasting.snf import CHECKPOINT_SAMPLER
from pipelines.clip_scoring import score_split_many
from pipelines.offline.evaluation import load_clips, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/calibrated_recall.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clips = load_clips(args.data, "test")
    out: dict[str, Any] = {}
    for path in args.models:
        ck = load_checkpoint(path)
        cfg = ScorerConfig(
            name="fused", num_samples=DEFAULT_SAMPLES, sampler=CHECKPOINT_SAMPLER, seed=0
        )
        t0 = time.perf_counter()
        many, secs, nw = score_split_many(ck, clips, cfg, ["fused"], 1, progress=False)
        r = report("fused", CHECKPOINT_SAMPLER.name, many["fused"], 9.5, 6.0, 30.0, secs, nw)
        d = {k: v for k, v in asdict(r).items() if not isinstance(v, (list, dict))}
        d.update(calibrated_recall(ck, args.data, cfg, many["fused"], 6.0))
        d.update(scene_calibrated_recall(many["fused"], 6.0))
        d["seconds_total"] = time.perf_counter() - t0
        out[str(path)] = d
        print(str(path), json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}), flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
