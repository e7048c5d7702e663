"""What per-frame seeding costs the score stage: frames and person windows per second with
``forecaster.seeding: frame`` (one model call per camera frame, reproducible: ``run`` and
``score`` give identical scores) against ``batch`` (the frames of every camera of a batch
in one model call), on real AIHub2 poses replayed as N cameras, in one run.

Usage::

    .venv/bin/python bench/seeding_cost.py [--model CKPT] [--cameras 4] [--frames 300]

Without ``--model`` an untrained model of the default architecture (7 members) is used:
the cost of a model call does not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.datasets import load_split
from detector.pose import PoseFrame, frames_from_tracks
from forecasting.checkpoint import save_checkpoint
from forecasting.defaults import DEFAULT_MEMBERS
from forecasting.torch_model import GRUNF, Ensemble, ModelConfig
from forecasting.train import build_windows
from forecasting.windows import Standardizer, WindowConfig
from pipelines.config import PosewatchConfig
from pipelines.model_provider import CheckpointProvider
from pipelines.score_stage import ScoreStage
from pipelines.tracks import load_tracks

ROOT = Path(__file__).resolve().parents[1]
AIHUB2 = ROOT / ".." / "shared" / "data" / "aihub2"


def default_model(path: Path) -> Path:
    tracks = load_tracks(AIHUB2, "train")[:6]
    w = build_windows(tracks, WindowConfig(), 4, normal_only=False)
    std = Standardizer.fit(w)
    torch.manual_seed(0)
    members = [GRUNF(ModelConfig(), std).eval() for _ in range(DEFAULT_MEMBERS)]
    return save_checkpoint(path, Ensemble(members).eval(), WindowConfig())


def camera_frames(cameras: int, n: int) -> list[PoseFrame]:
    """The first ``n`` frames of AIHub2 test clips, one clip per camera, interleaved."""
    clips = load_split(AIHUB2, "test")
    per = []
    for c in range(cameras):
        clip = clips[c % len(clips)]
        per.append(frames_from_tracks(clip.tracks, f"cam{c}", (1920, 1080))[:n])
    return [f for group in zip(*per, strict=False) for f in group]


def measure(model: Path, frames: list[PoseFrame], seeding: str, batch: int) -> dict[str, float]:
    cfg = PosewatchConfig.model_validate(
        {
            "cameras": {"x": {"source": "x.mp4"}},
            "forecaster": {"checkpoint": str(model), "seeding": seeding},
            "alerting": {"threshold": 0.0},
        }
    )
    stage = ScoreStage(CheckpointProvider(cfg), cfg.alerting, cfg.forecaster.seeding)
    t0 = time.perf_counter()
    windows = 0
    for i in range(0, len(frames), batch):
        windows += sum(len(o.scores) for o in stage.process(frames[i : i + batch]))
    secs = time.perf_counter() - t0
    return {"seconds": secs, "frames_per_s": len(frames) / secs, "windows_per_s": windows / secs,
            "windows": windows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--frames", type=int, default=300, help="frames per camera")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "seeding_cost.json")
    args = ap.parse_args()
    model = args.model or default_model(Path(tempfile.mkdtemp()) / "default-untrained.pt")
    frames = camera_frames(args.cameras, args.frames)
    rows = {s: measure(model, frames, s, args.cameras) for s in ("frame", "batch")}
    ratio = rows["batch"]["windows_per_s"] / rows["frame"]["windows_per_s"]
    print(f"{len(frames)} frames of {args.cameras} cameras, batches of {args.cameras} frames, "
          f"{torch.get_num_threads()} torch threads")  # fmt: skip
    print(f"{'seeding':<8}{'frames/s':>10}{'windows/s':>11}{'windows':>9}")
    for s, r in rows.items():
        print(f"{s:<8}{r['frames_per_s']:>10.1f}{r['windows_per_s']:>11.1f}{r['windows']:>9.0f}")
    print(f"batch / frame: x{ratio:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": platform.machine(), "threads": torch.get_num_threads(),
        "model": str(args.model or "untrained default architecture"),
        "cameras": args.cameras, "frames": len(frames), "rows": rows, "batch_over_frame": ratio,
    }, indent=2))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
