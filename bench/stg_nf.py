"""STG-NF baseline on AIHub2 under either training regime, for a like-for-like comparison.

STG-NF (Hirschorn & Avidan, ICCV 2023) written anew here from the paper and the defaults the
anchor run used (``../shared/benchmarks/anchors.md``): 24-frame windows of 18 OpenPose-order
keypoints (COCO 17 + neck), per-window normalisation (centre, divide by the y spread), a Glow
of K = 8 steps (ActNorm, channel reversal, affine coupling whose subnet is one ST-GCN unit,
temporal kernel 13, uniform adjacency of hop distance <= 8), prior N(3, 1), 616 parameters;
Adamax lr 5e-4, weight decay 5e-5, lr x 0.99 per epoch, batch 256, 8 epochs, last epoch kept,
training stride 6 with a horizontal-flip copy, test stride 1 (the flow is
``forecasting.posture.GraphGlow``, which posewatch's posture flows use too). Scoring as the
anchor: a window's log-likelihood goes to its centre frame, a frame takes the worst person,
uncovered frames the most normal score, then Gaussian smoothing with sigma 1..6 in turn per
clip, one AUC over all test frames.

``--regime all`` trains on every train window (the anchor's unsupervised regime);
``--regime normal`` on the windows whose frames are all labelled normal (posewatch's regime).
No STG-NF code is used or needed; the anchor's 10 seeds are the check that this matches.

Usage::

    .venv/bin/python bench/stg_nf.py --regime normal --seeds 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecasting.detection_metrics import roc_auc
from forecasting.frame_scores import person_frame_scores, worst_person
from forecasting.posture import GraphGlow, train_glow

SEG_LEN = 24
TRAIN_STRIDE = 6
VID_RES = np.array([856.0, 480.0])  # the code's default; AIHub2's 1920x1080 has the same aspect
# COCO-17 + neck (mean of the shoulders, index 17) in OpenPose order.
OPENPOSE_ORDER = [0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
OPENPOSE_EDGES = [
    (4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5),
    (8, 2), (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14),
]  # fmt: skip


@dataclass
class Segments:
    """Windows ``(N, 2, 24, 18)`` with their clip, person and first frame number."""

    data: np.ndarray
    clip: np.ndarray
    person: np.ndarray
    start: np.ndarray
    normal: np.ndarray  # every frame of the window labelled normal


def load_segments(root: Path, split: str, stride: int) -> tuple[Segments, dict[str, np.ndarray]]:
    """Cut a split into STG-NF windows: 24 consecutive entries of a person's sorted frames,
    at most 2 frames missing, starts every ``stride`` entries (the last start excluded)."""
    data, clips, persons, starts, normal = [], [], [], [], []
    labels: dict[str, np.ndarray] = {}
    for path in sorted((root / "pose" / split).glob("*_alphapose_tracked_person.json")):
        clip = path.name.replace("_alphapose_tracked_person.json", "")
        gt = np.load(root / "gt" / f"{clip}.npy").astype(np.float64)
        labels[clip] = gt
        for pid, frames in json.loads(path.read_text()).items():
            keys = sorted(frames, key=int)
            nums = np.array([int(k) for k in keys])
            kp = np.array([frames[k]["keypoints"] for k in keys], dtype=np.float64)
            kp = kp.reshape(len(keys), 17, 3)
            for seg in range(math.ceil((len(keys) - SEG_LEN) / stride)):
                i = seg * stride
                span = nums[i : i + SEG_LEN]
                if int(np.sum(span < span[0] + SEG_LEN)) < SEG_LEN - 2:
                    continue
                data.append(kp[i : i + SEG_LEN])
                clips.append(clip)
                persons.append(int(pid))
                starts.append(int(span[0]))
                normal.append(bool(np.all(gt[span[0] : span[-1] + 1] == 0)))
    kp = np.stack(data)
    neck = 0.5 * (kp[:, :, 5] + kp[:, :, 6])
    kp = np.concatenate([kp, neck[:, :, None]], axis=2)[:, :, OPENPOSE_ORDER, :2]
    seg = Segments(
        data=kp.transpose(0, 3, 1, 2).astype(np.float32),
        clip=np.array(clips),
        person=np.array(persons),
        start=np.array(starts),
        normal=np.array(normal, dtype=bool),
    )
    return seg, labels


def normalise(x: np.ndarray) -> np.ndarray:
    """Per window: divide by the video size, centre, divide by the y standard deviation."""
    x = x / VID_RES[None, :, None, None]
    x = x - x.mean(axis=(2, 3), keepdims=True)
    return (x / x[:, 1:2].std(axis=(2, 3), keepdims=True)).astype(np.float32)


def train_model(train: np.ndarray, seed: int, epochs: int = 8) -> GraphGlow:
    torch.manual_seed(seed)
    np.random.seed(0)
    flipped = train.copy()
    flipped[:, 0] *= -1.0  # the code's flip negates x (no left/right swap)
    x = torch.from_numpy(np.concatenate([normalise(train), normalise(flipped)]))
    return train_glow(stgnf(), x, epochs)[0]


def stgnf() -> GraphGlow:
    """STG-NF's flow: K = 8 steps over 18 OpenPose joints, 24 frames, hop distance 8."""
    return GraphGlow(len(OPENPOSE_ORDER), OPENPOSE_EDGES, SEG_LEN)


@torch.no_grad()
def window_scores(model: GraphGlow, test: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(normalise(test))
    return -torch.cat([model(b) for b in x.split(4096)]).numpy()  # normality


def frame_auc(
    seg: Segments, normality: np.ndarray, labels: dict[str, np.ndarray], smooth: bool = True
) -> float:
    """Pooled frame AUC-ROC by STG-NF's rules: each window's score on its centre frame, the
    worst person per frame, frames no window covers get the most normal score of the whole
    split (not of the clip), then Gaussian sigma 1..6 in turn (scipy's default edges)."""
    anomaly = -normality
    per_clip = []
    for clip, gt in labels.items():
        sel = seg.clip == clip
        people = []
        for p in np.unique(seg.person[sel]):
            m = sel & (seg.person == p)
            people.append(person_frame_scores(seg.start[m] + SEG_LEN // 2, anomaly[m], len(gt)))
        per_clip.append(worst_person(people, len(gt), empty=np.nan))
    lowest = np.nanmin(np.concatenate(per_clip))
    scores = []
    for s in per_clip:
        s = np.where(np.isfinite(s), s, lowest)
        if smooth:
            for sig in range(1, 7):
                s = gaussian_filter1d(s, sigma=sig)
        scores.append(s)
    return 100 * roc_auc(np.concatenate(list(labels.values())) > 0.5, np.concatenate(scores))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--regime", choices=["all", "normal"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--epochs", type=int, default=8, help="8 = STG-NF's default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"no AIHub2 data at {args.data}: pass --data PATH")
    t0 = time.perf_counter()
    train, _ = load_segments(args.data, "train", TRAIN_STRIDE)
    test, labels = load_segments(args.data, "test", 1)
    keep = train.normal if args.regime == "normal" else np.ones(len(train.data), dtype=bool)
    print(
        f"train windows {len(train.data)} (normal {int(train.normal.sum())}), using {int(keep.sum())};"
        f" test windows {len(test.data)}; loaded in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    params = sum(p.numel() for p in stgnf().parameters())
    rows = []
    for seed in args.seeds:
        t1 = time.perf_counter()
        model = train_model(train.data[keep], seed, args.epochs)
        normality = window_scores(model, test.data)
        row = {
            "seed": seed,
            "auc_smoothed": frame_auc(test, normality, labels),
            "auc_raw": frame_auc(test, normality, labels, smooth=False),
            "seconds": time.perf_counter() - t1,
        }
        rows.append(row)
        print(
            f"seed {seed}: AUC {row['auc_smoothed']:.1f} (unsmoothed {row['auc_raw']:.1f})"
            f"  {row['seconds']:.0f} s",
            flush=True,
        )
    aucs = [r["auc_smoothed"] for r in rows]
    summary = {
        "mean": statistics.mean(aucs),
        "std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
        "median": statistics.median(aucs),
    }
    print(
        f"\nSTG-NF re-implementation, regime {args.regime}, {args.epochs} epochs, {params} parameters"
    )
    print(f"{'seed':>6}{'AUC smoothed':>14}{'AUC raw':>10}")
    for r in rows:
        print(f"{r['seed']:>6}{r['auc_smoothed']:>14.1f}{r['auc_raw']:>10.1f}")
    print(
        f"{len(rows)} seeds: mean {summary['mean']:.1f} ± {summary['std']:.1f},"
        f" median {summary['median']:.1f}"
    )
    tag = "" if args.epochs == 8 else f"_e{args.epochs}"
    out = args.out or Path(f"bench/results/stg_nf_{args.regime}{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "regime": args.regime,
                "epochs": args.epochs,
                "parameters": params,
                "train_windows": int(keep.sum()),
                "test_windows": len(test.data),
                "rows": rows,
                **summary,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
