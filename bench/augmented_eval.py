"""Does the default detector hold up when the camera changes? AIHub2 test, transformed.

Test-time augmentation of the whole test split (every keypoint of every clip, in pixels,
before windows are cut), one model, one draw of futures per augmentation (the same seed),
scored by ``fused`` (the default) and ``minhde`` in one pass. A detector that models normal
*behaviour* rather than this camera's picture of it keeps its AUC-ROC under a change of
view; the drop per augmentation is what to watch. Uniform scale and translation are not
listed: both models normalise each window by the person's place and size, so they are
invariant by construction.

Augmentations (about the frame centre, coordinates in units of the frame height):

- ``mirror``: horizontal flip (left and right keypoints swapped), a camera on the other side.
- ``rot+15`` / ``rot-15``: camera roll by 15 degrees.
- ``squash-y0.7``: vertical scale 0.7 (a camera looking down more steeply foreshortens
  people), ``squash-x0.7`` the same sideways.
- ``tilt0.5``: a perspective homography (``u, v -> u, v / (1 + 0.5 v)``, ``x`` likewise),
  so people near the top of the frame are smaller than near the bottom.
- ``jitter0.02``: Gaussian noise of 2% of the person's height per keypoint and frame (a
  noisier pose detector than AlphaPose).
- ``fps15``: every other frame dropped, labels too, scored as a 15 fps camera: its frames
  placed on the model's 30 fps time axis, the gaps between them interpolated
  (:func:`forecasting.windows.model_frames`, what the service does with a camera's rate).
- ``fps15-unplaced``: the same frames scored as if they were 30 fps (a pose source that
  states no rate: twice the motion per frame).

Usage::

    .venv/bin/python bench/augmented_eval.py [--model runs/anomaly_eval/seed0-m7.pt]
        [--augment none mirror rot+15 ...] [--stride 2] [--threads 2] [--split validation]

Prints a table (AUC-ROC offline / causal per scorer and the change from ``none``) and writes
``bench/results/augmented_eval.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.datasets import Clip
from detector.pose import Track
from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLES
from forecasting.samplers import sampler_by_name
from forecasting.scoring import ScorerConfig
from forecasting.snf import CHECKPOINT_SAMPLER
from pipelines.clip_scoring import score_split_many
from pipelines.offline.evaluation import load_clips, report

W, H = 1920.0, 1080.0  # AIHub2's frame size (../shared/data/README.md), pixels
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _centred(f: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Transform:
    """A map of centred coordinates (units of the frame height) as a keypoint transform."""

    def apply(kp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = kp.copy()
        u, v = (kp[..., 0] - W / 2) / H, (kp[..., 1] - H / 2) / H
        u2, v2 = f(u, v)
        out[..., 0], out[..., 1] = u2 * H + W / 2, v2 * H + H / 2
        return out

    return apply


def _rotate(deg: float) -> Transform:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return _centred(lambda u, v: (c * u - s * v, s * u + c * v))


def _mirror(kp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = kp[:, list(FLIP_INDEX)].copy()
    out[..., 0] = W - out[..., 0]
    return out


def _jitter(frac: float) -> Transform:
    def apply(kp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        with warnings.catch_warnings():  # frames where the person was not seen: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            height = np.nanmedian(np.nanmax(kp[..., 1], 1) - np.nanmin(kp[..., 1], 1))
        out = kp.copy()
        out[..., :2] += rng.normal(0.0, frac * float(height), kp[..., :2].shape)
        return out

    return apply


AUGMENTS: dict[str, Transform | None] = {
    "none": None,
    "mirror": _mirror,
    "rot+15": _rotate(15.0),
    "rot-15": _rotate(-15.0),
    "squash-y0.7": _centred(lambda u, v: (u, 0.7 * v)),
    "squash-x0.7": _centred(lambda u, v: (0.7 * u, v)),
    "tilt0.5": _centred(lambda u, v: (u / (1 + 0.5 * v), v / (1 + 0.5 * v))),
    "jitter0.02": _jitter(0.02),
    "fps15": None,  # handled by _half_rate
    "fps15-unplaced": None,
}


def _half_rate(clip: Clip) -> Clip:
    """Every other frame of ``clip`` (tracks, labels), renumbered: a 15 fps camera."""
    tracks = {}
    for pid, t in clip.tracks.items():
        keep = t.frames % 2 == 0
        if keep.sum() < 2:
            continue
        tracks[pid] = Track(
            t.track_id, t.frames[keep] // 2, t.keypoints[keep], t.scores[keep], t.present[keep]
        )
    labels = None if clip.labels is None else clip.labels[::2]
    return Clip(clip.name, clip.path, tracks, labels, clip.label_path)


def augmented(clips: list[Clip], name: str, seed: int) -> list[Clip]:
    """``clips`` with augmentation ``name`` applied (a deep copy; NaN keypoints stay NaN)."""
    if name.startswith("fps15"):
        return [_half_rate(c) for c in clips]
    f = AUGMENTS[name]
    if f is None:
        return clips
    rng = np.random.default_rng(seed)
    out = copy.deepcopy(clips)
    for clip in out:
        for t in clip.tracks.values():
            t.keypoints[..., :2] = f(t.keypoints, rng)[..., :2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--model", type=Path, default=Path("runs/anomaly_eval/seed0-m7.pt"))
    ap.add_argument("--augment", nargs="+", default=list(AUGMENTS), choices=list(AUGMENTS))
    ap.add_argument("--scorers", nargs="+", default=["minhde", "fused"])
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    ap.add_argument("--stride", type=int, default=2, help="score every STRIDE-th window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sampler",
        default=CHECKPOINT_SAMPLER.name,
        help="what a checkpoint trained now carries (default); gru-snf: temperature 1, "
        "the default before session 14",
    )
    ap.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="validation: the checkpoint's validation clips (AIHub2 train, labelled), "
        "to choose on without the test split's labels",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sigma", type=float, default=9.5)
    ap.add_argument("--causal-sigma", type=float, default=6.0)
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: bench/results/augmented_eval.json (test) or "
        "bench/results/augmented_eval_validation.json",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.model)
    if args.out is None:
        suffix = "" if args.split == "test" else f"_{args.split}"
        args.out = Path(f"bench/results/augmented_eval{suffix}.json")
    if args.split == "validation":  # the checkpoint's held-out clips of its training split
        val = set(ck.meta.get("validation_clips") or [])
        clips = [c for c in load_clips(args.data, ck.meta.get("split", "train")) if c.name in val]
        if not clips:
            sys.exit(f"{args.model}: no validation clips of the checkpoint found in {args.data}")
    else:
        clips = load_clips(args.data, "test")
    sampler = sampler_by_name(args.sampler, ck.model.flow.num_layers, ck.sampler)
    cfg = ScorerConfig(
        name=args.scorers[0], num_samples=args.samples, sampler=sampler, seed=args.seed
    )
    rows = []
    for aug in args.augment:
        fps = 15.0 if aug.startswith("fps15") else 30.0
        sig = 0.5 if aug.startswith("fps15") else 1.0  # the same smoothing in seconds
        many, secs, nw = score_split_many(
            ck, augmented(clips, aug, args.seed), cfg, args.scorers, args.stride, progress=False,
            fps=fps if aug == "fps15" else None,
        )  # fmt: skip
        for k in args.scorers:
            rep = report(k, sampler.name, many[k], args.sigma * sig, args.causal_sigma * sig, fps, secs, nw)  # fmt: skip
            rows.append(
                {
                    "augment": aug,
                    "scorer": k,
                    "sampler": sampler.name,
                    "auc_offline": 100 * rep.auc_offline,
                    "auc_causal": 100 * rep.auc_causal,
                    "seconds": secs,  # the shared scoring pass
                    "windows": nw,
                }
            )
            print(f"{aug:<16}{k:<8}{100 * rep.auc_offline:8.2f}{100 * rep.auc_causal:8.2f}", flush=True)  # fmt: skip
    base = {r["scorer"]: r for r in rows if r["augment"] == "none"}
    head = f"{'augment':<16}{'scorer':<8}{'AUC off':>9}{'causal':>9}{'d off':>8}{'d causal':>10}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        b = base.get(r["scorer"])
        r["delta_offline"] = r["auc_offline"] - b["auc_offline"] if b else None
        r["delta_causal"] = r["auc_causal"] - b["auc_causal"] if b else None
        d = f"{r['delta_offline']:+8.2f}{r['delta_causal']:+10.2f}" if b else ""
        print(f"{r['augment']:<16}{r['scorer']:<8}{r['auc_offline']:9.2f}{r['auc_causal']:9.2f}{d}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": str(args.model),
                "split": args.split,
                "stride": args.stride,
                "samples": args.samples,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
