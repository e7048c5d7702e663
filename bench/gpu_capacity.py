"""How many 1080p 30 fps cameras one machine sustains end to end: decode, batched YOLO-pose
across cameras, per-camera tracking, scoring with the default model, alert routing.

Runs ``posewatch run`` in-process with ``N`` cameras, each the same 1080p video looped and
paced at ``--fps`` (a live camera: frames a busy service cannot take are dropped), for
``--seconds`` per step, doubling ``N`` from ``--start`` until a step drops more than
``--max-drop`` of its frames (or does not reach ``--fps`` per camera), then bisecting
between the last good and the first bad count. Prints per step: cameras, frames/s per
camera, drop share, the busy share of each stage (decode, detect, forecast, score, publish:
seconds spent / wall seconds, from the service's stage-latency histogram) and GPU memory;
then the cameras one device sustains and the stage that saturates first (the busiest one
at the first failing step). Writes ``bench/results/gpu_capacity.json``.

The pose backend is the fastest that device has (``--backend auto``: torch on CUDA,
OpenVINO on CPU). The threshold is the checkpoint's calibration (so early stopping works
as in production) unless ``--threshold`` is given.

Usage::

    .venv/bin/python bench/gpu_capacity.py --model CKPT [--device cuda] [--seconds 30]
    .venv/bin/python bench/gpu_capacity.py --model CKPT --device cpu --seconds 8 --max-cameras 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cameras import pose_model
from pipelines.config import PosewatchConfig, load_config
from pipelines.run_service import Service

VIDEO = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "demo_skeleton.mp4"
)
STAGES = ("decode", "detect", "forecast", "score", "publish")


def stage_seconds(svc: Service) -> dict[str, float]:
    """Seconds spent per stage, all cameras (the histogram's ``_sum`` series)."""
    out = dict.fromkeys(STAGES, 0.0)
    for metric in svc.metrics.registry.collect():
        if metric.name != "posewatch_stage_latency_seconds":
            continue
        for s in metric.samples:
            if s.name.endswith("_sum") and s.labels.get("stage") in out:
                out[s.labels["stage"]] += float(s.value)
    return out


def step_config(args: argparse.Namespace, n: int) -> PosewatchConfig:
    """The service configuration of a step with ``n`` cameras."""
    tmp = Path(tempfile.mkdtemp(prefix="posewatch-capacity-"))
    cameras = {
        f"cam{i}": {"source": str(args.video), "pace": True, "loop": True, "fps": args.fps}
        for i in range(n)
    }
    cfg = load_config(
        data={
            "cameras": cameras,
            "detector": {"device": args.device, "backend": args.backend, "batch_size": max(1, n)},
            "forecaster": {"checkpoint": str(args.model), "threads": args.threads},
            "alerting": {"threshold": args.threshold},
            "kafka": {"spool_dir": str(tmp / "spool")},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": str(tmp / "alerts.jsonl")},
            "ui": {"enabled": False},
        }
    )
    return cfg


def step(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One run with ``n`` cameras; returns its row."""
    cfg = step_config(args, n)
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    svc = Service(cfg)
    s = svc.run(max_seconds=args.seconds)
    wall = max(s.seconds - s.startup_s, 1e-9)
    frames = sum(s.frames.values())
    dropped = sum(s.dropped.values())
    busy = {k: v / wall for k, v in stage_seconds(svc).items()}
    row: dict[str, Any] = {
        "cameras": n,
        "frames": frames,
        "fps_per_camera": frames / wall / n,
        "dropped": dropped,
        "drop_share": dropped / max(frames + dropped, 1),
        "busy": busy,
        "busiest_stage": max(busy, key=lambda k: busy[k]),
        "startup_s": s.startup_s,
    }
    if args.device.startswith("cuda"):
        import torch

        row["gpu_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row["ok"] = row["drop_share"] <= args.max_drop and row["fps_per_camera"] >= 0.9 * args.fps
    print(
        f"{n:>5}{row['fps_per_camera']:>9.1f}{100 * row['drop_share']:>8.1f}"
        + "".join(f"{100 * busy[k]:>9.0f}" for k in STAGES)
        + f"{row.get('gpu_memory_mib', 0):>9.0f}  {'ok' if row['ok'] else 'saturated'}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True, help="the default (calibrated) model")
    ap.add_argument("--video", type=Path, default=VIDEO, help="a 1080p video (looped)")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--backend", default="auto", help="pose backend (auto: the fastest)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="per step")
    ap.add_argument("--start", type=int, default=1)
    ap.add_argument("--max-cameras", type=int, default=256)
    ap.add_argument("--max-drop", type=float, default=0.01, help="drop share that fails a step")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_capacity.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"{args.video.name} at {args.fps:g} fps per camera on {args.device}, {args.seconds:g} s a step"
    )
    print(
        f"{'cams':>5}{'fps/cam':>9}{'drop %':>8}"
        + "".join(f"{k:>9}" for k in STAGES)
        + f"{'GPU MiB':>9}"
    )
    # The pose backend's one-time preparation (an export on a fresh machine, cached) is not
    # capacity: done here, before the timed steps.
    pose_model(step_config(args, 1))
    rows: dict[int, dict[str, Any]] = {}
    n, good, bad = args.start, 0, None
    t0 = time.monotonic()
    while n <= args.max_cameras:  # doubling
        rows[n] = step(args, n)
        if not rows[n]["ok"]:
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:  # bisection
        mid = (good + bad) // 2
        rows[mid] = step(args, mid)
        good, bad = (mid, bad) if rows[mid]["ok"] else (good, mid)
    first_bad = rows.get(bad) if bad is not None else None
    result = {
        "device": args.device,
        "backend": args.backend,
        "video": args.video.name,
        "fps": args.fps,
        "seconds_per_step": args.seconds,
        "cameras_sustained": good,
        "saturating_stage": first_bad["busiest_stage"] if first_bad else None,
        "gpu_memory_mib": max((r.get("gpu_memory_mib", 0.0) for r in rows.values()), default=0.0),
        "steps": [rows[k] for k in sorted(rows)],
        "minutes": (time.monotonic() - t0) / 60,
    }
    print(
        f"{good} camera(s) of {args.fps:g} fps sustained on {args.device}; "
        f"saturates first: {result['saturating_stage'] or f'not reached by {args.max_cameras}'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
