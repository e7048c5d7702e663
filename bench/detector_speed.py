"""Detector speed on vtest.avi: our pipeline against a bare Ultralytics predict loop.

For each backend (torch, OpenVINO, ONNX Runtime) and image size: frames/s of our detector
(source thread decoding, muxer, batched inference, per-camera ByteTrack) and of a bare
``YOLO(...).predict(source=video, stream=True)`` loop over the same frames, measured in the
same run, with persons per frame beside each. Then 4 cameras (4 copies of vtest.avi)
batched through one model against the same 4 cameras one after another.

Usage::

    .venv/bin/python bench/detector_speed.py [--frames 150] [--sizes 640 960 1088] [--device cpu]

Both paths are warmed up before timing (predictor setup, tracker imports), then timed in
``--rounds`` alternating rounds; the table shows the median frames/s of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.extract import track_video
from detector.muxer import FrameMuxer
from detector.pose_model import PoseModel
from detector.sources import CameraSource, SourceConfig
from detector.tracking import CameraTracker

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "vtest.avi"


def ours(model: PoseModel, n: int, batch: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    persons = frames = 0
    for pf in track_video(model, VIDEO, "vtest", batch_size=batch):
        persons += len(pf.persons)
        frames += 1
        if frames >= n:
            break
    return frames / (time.perf_counter() - t0), persons / max(frames, 1)


def bare_model(model: PoseModel) -> Any:
    from ultralytics import YOLO

    return YOLO(str(model.path), task="pose")


def bare(model: PoseModel, yolo: Any, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    persons = frames = 0
    for r in yolo.predict(
        source=str(VIDEO),
        stream=True,
        imgsz=model.imgsz,
        device=model.device,
        verbose=False,
        classes=[0],
        conf=model.conf,
    ):
        persons += len(r.boxes)
        frames += 1
        if frames >= n:
            break
    return frames / (time.perf_counter() - t0), persons / max(frames, 1)


def cameras(model: PoseModel, n: int, batched: bool, k: int = 4) -> float:
    t0 = time.perf_counter()
    total = 0
    if batched:
        srcs = [
            CameraSource(f"cam{i}", SourceConfig(uri=str(VIDEO), queue_size=8)).start()
            for i in range(k)
        ]
        trackers = {s.name: CameraTracker(s.name) for s in srcs}
        mux = FrameMuxer(srcs, batch_size=k, timeout=0.05)
        while total < n * k:
            batch = mux.next_batch()
            if not batch:
                break
            for f, det in zip(batch, model.predict([f.image for f in batch]), strict=True):
                trackers[f.camera].update(det, f.index, f.timestamp)
            total += len(batch)
        for s in srcs:
            s.stop()
    else:
        for i in range(k):
            for j, _ in enumerate(track_video(model, VIDEO, f"cam{i}", batch_size=1)):
                total += 1
                if j + 1 >= n:
                    break
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 960, 1088])
    ap.add_argument("--backends", nargs="+", default=["torch", "openvino", "onnx"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (median)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/detector_speed.json"))
    args = ap.parse_args()
    rows = []
    for backend in args.backends:
        for size in args.sizes:
            model = PoseModel(imgsz=size, backend=backend, device=args.device)
            yolo = bare_model(model)
            bare(model, yolo, 5)  # warm-up: predictor setup, export load
            ours(model, 5, batch=1)  # warm-up: tracker imports, source thread
            b_runs, o_runs = [], []
            for r in range(args.rounds):
                if r % 2 == 0:  # alternate the order so drift hits both alike
                    b = bare(model, yolo, args.frames)
                    o = ours(model, args.frames, 1)
                else:
                    o = ours(model, args.frames, 1)
                    b = bare(model, yolo, args.frames)
                b_runs.append(b)
                o_runs.append(o)
            b_fps, b_pp = statistics.median(x[0] for x in b_runs), b_runs[0][1]
            o_fps, o_pp = statistics.median(x[0] for x in o_runs), o_runs[0][1]
            rows.append(
                {
                    "backend": backend,
                    "imgsz": size,
                    "device": model.device,
                    "ours_fps": o_fps,
                    "bare_fps": b_fps,
                    "ratio": o_fps / b_fps,
                    "ours_persons": o_pp,
                    "bare_persons": b_pp,
                }
            )
            print(
                f"{backend:<9}{size:>6}  ours {o_fps:6.2f} fps ({o_pp:.2f} persons)  bare {b_fps:6.2f} fps ({b_pp:.2f} persons)  ratio {o_fps / b_fps:.2f}",
                flush=True,
            )
    default = PoseModel(device=args.device)
    n4 = max(20, args.frames // 2)
    seq = cameras(default, n4, batched=False)
    bat = cameras(default, n4, batched=True)
    print(
        f"4 cameras ({default.backend}, imgsz {default.imgsz}): batched {bat:.2f} frames/s vs one after another {seq:.2f} (x{bat / seq:.2f})"
    )
    head = f"{'backend':<10}{'imgsz':>6}{'ours f/s':>10}{'bare f/s':>10}{'ratio':>7}{'persons':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['backend']:<10}{r['imgsz']:>6}{r['ours_fps']:>10.2f}{r['bare_fps']:>10.2f}{r['ratio']:>7.2f}{r['ours_persons']:>9.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dev = default.device
    args.out.write_text(
        json.dumps(
            {
                "device": dev,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "frames": args.frames,
                "rows": rows,
                "four_cameras": {
                    "backend": default.backend,
                    "imgsz": default.imgsz,
                    "batched_fps": bat,
                    "sequential_fps": seq,
                },
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
