"""Ensemble size and futures per member, from stored displacements of single models.

Each single-model checkpoint (``bench/anomaly_eval.py --members 1`` caches them as
``runs/anomaly_eval/seed{k}.pt``) draws K futures once for every window of AIHub2 test and
of its validation clips; per window and future the script keeps the ``minhde`` numerator
(horizon-weighted, per joint) and, for the validation clips, the displacements. Any subset
of the models pooled with any number of futures per member is then scored as ``minhde``
scores an ensemble: error scale refitted on the pooled validation futures (each joint's
median best-of-K error on normal windows), best of the pooled futures, log, the window's
last frame, worst person, Gaussian smoothing, one AUC over all test frames. Prints mean and
sample std over subsets and writes JSON. This is how ``DEFAULT_MEMBERS`` and
``DEFAULT_SAMPLES`` were chosen (docs/DECISIONS.md, session 5).

Usage::

    .venv/bin/python bench/ensemble_size.py --models runs/anomaly_eval/seed{0..8}.pt \\
        [--sizes 1 3 5 7 9] [--per-member 3 6] [--max-subsets 12]

Drawing costs about 1.5 minutes per model on the 2 cores (cached in ``--cache``). Seed 0
alone reproduces `bench/anomaly_eval.py --members 1`: 89.45 offline, 88.67 causal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.datasets import load_split
from forecasting.checkpoint import load_checkpoint
from forecasting.detection_metrics import roc_auc
from forecasting.frame_scores import person_frame_scores, worst_person
from forecasting.snf import GRU_NF
from forecasting.torch_model import to_tensor
from forecasting.windows import cut_windows, fill_unseen
from pipelines.clip_scoring import ClipScores, pooled

POWER = 3.0  # ScorerConfig.horizon_power


def draw(ck_path: Path, data: Path, k: int, max_clips: int | None) -> dict[str, Any]:
    """Per split, per clip: labels and, per track, end frames and the stored errors."""
    ck = load_checkpoint(ck_path)
    model, wcfg = ck.model, ck.window_config
    n_obs = 1 + model.cfg.t_obs
    std = model.standardizer()
    out: dict[str, Any] = {}
    val_names = set(ck.meta["validation_clips"])
    for part, split in (("test", "test"), ("val", "train")):
        clips = load_split(data, split)
        if part == "val":
            clips = [c for c in clips if c.name in val_names]
        clips = clips[:max_clips] if max_clips else clips
        rows = []
        for clip in clips:
            per = {}
            for tid, tr in clip.tracks.items():
                w = cut_windows(tr.keypoints, wcfg, stride=1, fill="window")
                if len(w):
                    w = w.select(tr.present[w.start + (wcfg.length - 1) * wcfg.frame_step])
                if len(w) == 0:
                    continue
                P = to_tensor(fill_unseen(w.poses, std.pose_mean), "cpu")
                M = to_tensor(w.mask, "cpu")
                V = w.visible[:, n_obs:] & w.mask[:, n_obs:]
                weight = np.arange(1, V.shape[1] + 1, dtype=np.float32) ** POWER
                Vw = V.astype(np.float32) * weight[None, :, None]
                torch.manual_seed(0)
                A, D = [], []
                with torch.inference_mode():
                    for i in range(0, len(w), 256):
                        o = model.sample(
                            P[i : i + 256, :n_obs], M[i : i + 256, :n_obs], None, k, GRU_NF
                        )
                        d = torch.linalg.vector_norm(o.poses - P[i : i + 256, None, n_obs:], dim=-1)
                        A.append(np.einsum("nkhj,nhj->nkj", d.numpy(), Vw[i : i + 256]))
                        if part == "val":
                            D.append(d.half().numpy())
                end = tr.frames[w.start + (wcfg.length - 1) * wcfg.frame_step]
                per[tid] = {"A": np.concatenate(A), "den": Vw.sum((1, 2)), "V": V, "end": end}
                if part == "val":
                    per[tid]["D"] = np.concatenate(D)
            rows.append(
                {"n": clip.num_frames, "labels": clip.frame_labels()[: clip.num_frames], "per": per}
            )
        out[part] = rows
    return out


def fit_scale(runs: list[dict[str, Any]], ks: list[int]) -> np.ndarray:
    """Each joint's median best-of-K (equal-weight ADE) error on normal validation windows."""
    errs: list[list[np.ndarray]] = [[] for _ in range(17)]
    for ci, clip in enumerate(runs[0]["val"]):
        for tid, p in clip["per"].items():
            normal = clip["labels"][np.minimum(p["end"], len(clip["labels"]) - 1)] == 0
            D = np.concatenate(
                [r["val"][ci]["per"][tid]["D"][:, :k] for r, k in zip(runs, ks, strict=True)], 1
            )
            D, V = D[normal].astype(np.float32), p["V"][normal]
            vm = V[:, None].astype(np.float32)
            ade = (D * vm).sum((2, 3)) / np.maximum(vm.sum((2, 3)), 1)
            best = D[np.arange(len(D)), ade.argmin(1)]
            for j in range(17):
                errs[j].append(best[..., j][V[..., j]])
    return np.array([max(float(np.median(np.concatenate(e))), 1e-4) for e in errs], np.float32)


def auc(
    runs: list[dict[str, Any]], ks: list[int], sigma: float, causal_sigma: float
) -> tuple[float, float]:
    """Pooled ``minhde`` frame AUC-ROC (offline, causal) of one subset."""
    scale = fit_scale(runs, ks)
    clips = []
    for ci, clip in enumerate(runs[0]["test"]):
        people = []
        for tid, p in clip["per"].items():
            A = np.concatenate(
                [r["test"][ci]["per"][tid]["A"][:, :k] for r, k in zip(runs, ks, strict=True)], 1
            )
            err = (A / scale).sum(-1) / np.maximum(p["den"], 1e-9)[:, None]
            score = np.log(np.maximum(err.min(1), 1e-6))
            people.append(person_frame_scores(p["end"], score, clip["n"]))
        clips.append(ClipScores("", worst_person(people, clip["n"]), clip["labels"]))
    s_off, y, _ = pooled(clips, sigma, False)
    s_cau, _, _ = pooled(clips, causal_sigma, True)
    return 100 * roc_auc(y, s_off), 100 * roc_auc(y, s_cau)


def _sd(x: list[float]) -> float:
    return statistics.stdev(x) if len(x) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--models", type=Path, nargs="+", required=True, help="single-model checkpoints"
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--samples", type=int, default=20, help="futures drawn per model")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 5, 7, 9])
    ap.add_argument("--per-member", type=int, nargs="+", default=[3, 6], help="futures per member")
    ap.add_argument("--max-subsets", type=int, default=12, help="evenly spaced subsets per size")
    ap.add_argument("--max-clips", type=int, default=None, help="first clips only (smoke runs)")
    ap.add_argument("--sigma", type=float, default=9.5)
    ap.add_argument("--causal-sigma", type=float, default=6.0)
    ap.add_argument("--cache", type=Path, default=Path("runs/ensemble_size"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/ensemble_size.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.cache.mkdir(parents=True, exist_ok=True)
    runs = []
    for path in args.models:
        tag = f"{path.stem}.k{args.samples}.c{args.max_clips or 'all'}.pkl"
        cached = args.cache / tag
        if cached.exists() and cached.stat().st_mtime > path.stat().st_mtime:
            runs.append(pickle.loads(cached.read_bytes()))
            continue
        t0 = time.perf_counter()
        run = draw(path, args.data, args.samples, args.max_clips)
        cached.write_bytes(pickle.dumps(run))
        runs.append(run)
        print(f"{path}: drawn in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    print(f"{'members':>7} {'per member':>10} {'subsets':>7} {'AUC off':>14} {'AUC causal':>14}")
    for size in [s for s in args.sizes if s <= len(runs)]:
        subsets = list(itertools.combinations(range(len(runs)), size))
        step = max(1, len(subsets) // args.max_subsets)
        subsets = subsets[::step][: args.max_subsets]
        for per in [p for p in args.per_member if p <= args.samples]:
            res = [
                auc([runs[i] for i in sub], [per] * size, args.sigma, args.causal_sigma)
                for sub in subsets
            ]
            off, cau = [r[0] for r in res], [r[1] for r in res]
            row = {
                "members": size,
                "per_member": per,
                "subsets": [list(s) for s in subsets],
                "auc_offline": off,
                "auc_causal": cau,
                "mean_offline": statistics.fmean(off),
                "std_offline": _sd(off),
                "mean_causal": statistics.fmean(cau),
                "std_causal": _sd(cau),
            }
            rows.append(row)
            print(
                f"{size:>7} {per:>10} {len(subsets):>7} {row['mean_offline']:>8.2f} ± {row['std_offline']:.2f}"
                f" {row['mean_causal']:>8.2f} ± {row['std_causal']:.2f}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"models": [str(m) for m in args.models], "samples": args.samples, "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
