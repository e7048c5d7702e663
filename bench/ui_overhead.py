"""CPU cost of the web view: ``posewatch run`` on vtest.avi with the UI off, then on with one
viewer connected, in one run of this script (the same machine, minutes apart).

The camera is paced at the video's 10 frames/s (a live camera), detection at the default
settings; the viewer is another process that does what the cameras page does (the live
image as fast as ``ui.max_fps`` allows, the camera states every second, the alert stream).
CPU time is the service process' (every thread: the web server's included), counted
between its 50th frame and its last, per processed frame.

Usage::

    .venv/bin/python bench/ui_overhead.py [--model CKPT] [--frames 400] [--imgsz 1088]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_config
from pipelines.run_service import Service

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "vtest.avi"

VIEWER = """
import sys, time, urllib.request, threading
base, fps, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def sse():
    try:
        with urllib.request.urlopen(base + "/api/events", timeout=seconds + 5) as r:
            while r.readline():
                pass
    except Exception:
        pass
threading.Thread(target=sse, daemon=True).start()
end, last_states, n = time.monotonic() + seconds, 0.0, 0
while time.monotonic() < end:
    t0 = time.monotonic()
    try:
        urllib.request.urlopen(base + "/api/cameras/lawn/frame.jpg", timeout=5).read()
        n += 1
    except Exception:
        time.sleep(0.2)
    if time.monotonic() - last_states > 1.0:
        last_states = time.monotonic()
        try:
            urllib.request.urlopen(base + "/api/cameras", timeout=5).read()
        except Exception:
            pass
    time.sleep(max(0.0, 1.0 / fps - (time.monotonic() - t0)))
print(n)
"""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(ui: bool, model: Path, frames: int, imgsz: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    cfg = load_config(
        data={
            "cameras": {"lawn": {"source": str(VIDEO), "pace": True, "loop": True}},
            "detector": {"imgsz": imgsz},
            "forecaster": {"checkpoint": str(model)},
            "alerting": {"threshold": -100.0, "min_duration_s": 0.3, "update_interval_s": 5.0},
            "kafka": {"spool_dir": str(tmp / "spool")},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": str(tmp / "alerts.jsonl"), "store": str(tmp / "a.db")},
            "ui": {"enabled": ui, "port": 0},
        }
    )
    svc = Service(cfg)
    marks: dict[str, tuple[float, int, float]] = {}
    viewer: subprocess.Popen[str] | None = None
    encoded: list[int] = []

    def watch() -> None:
        nonlocal viewer
        while not svc.stopping:
            n = sum(svc.summary.frames.values())
            if n >= 50 and "start" not in marks:
                marks["start"] = (cpu_seconds(), n, time.monotonic())
                if ui and svc.ui_server is not None:
                    viewer = subprocess.Popen(
                        [sys.executable, "-c", VIEWER, svc.ui_server.url,
                         str(cfg.ui.max_fps), "3600"],
                        stdout=subprocess.PIPE, text=True,
                    )  # fmt: skip
            if n >= frames:
                marks["end"] = (cpu_seconds(), n, time.monotonic())
                if svc.ui_server is not None:
                    encoded.append(svc.ui_server.hub.encoded)
                svc.stop()
                return
            time.sleep(0.05)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    s = svc.run(max_seconds=frames / 5 + 120)
    th.join(5)
    if viewer is not None:
        viewer.kill()
        viewer.wait()
    (c0, n0, t0), (c1, n1, t1) = marks["start"], marks["end"]
    return {
        "ui": ui,
        "frames": n1 - n0,
        "seconds": t1 - t0,
        "cpu_s": c1 - c0,
        "cpu_ms_per_frame": 1000 * (c1 - c0) / (n1 - n0),
        "dropped": sum(s.dropped.values()),
        "jpegs_encoded": encoded[0] if encoded else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="checkpoint (default: a tiny untrained one)")
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--imgsz", type=int, default=1088)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ui_overhead.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = args.model
    if model is None:
        from tests.web.helpers import tiny_checkpoint

        model = tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny.pt")
    rows = [measure(ui, model, args.frames, args.imgsz) for ui in (False, True)]
    off, on = rows
    ratio = on["cpu_ms_per_frame"] / off["cpu_ms_per_frame"]
    print(f"{'ui':<6}{'frames':>8}{'seconds':>9}{'cpu s':>8}{'cpu ms/frame':>14}{'dropped':>9}"
          f"{'jpegs':>7}")  # fmt: skip
    for r in rows:
        print(f"{('on' if r['ui'] else 'off'):<6}{r['frames']:>8}{r['seconds']:>9.1f}"
              f"{r['cpu_s']:>8.1f}{r['cpu_ms_per_frame']:>14.1f}{r['dropped']:>9}"
              f"{r['jpegs_encoded']:>7}")  # fmt: skip
    print(f"CPU with the UI and one viewer / without: {ratio:.3f} (+{100 * (ratio - 1):.1f}%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "ratio": ratio, "imgsz": args.imgsz}, indent=2))


if __name__ == "__main__":
    main()
