"""End-to-end service speed on vtest.avi: frames/s and frame-to-alert latency.

Runs ``posewatch run`` in-process with the default detector settings and a given checkpoint:
(1) one camera read as fast as possible, (2) one camera paced at the video's 10 fps (does
the service keep up: frames dropped?), (3) four cameras (four copies of vtest.avi) as fast
as possible. A low threshold makes every tracked person alert, so latencies have samples.

Usage::

    .venv/bin/python bench/service_speed.py --model CKPT [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.config import load_config
from pipelines.run_service import Service

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "vtest.avi"


def scenario(
    name: str, model: Path, cameras: dict[str, dict[str, object]], seconds: float
) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp())
    cfg = load_config(
        data={
            "cameras": cameras,
            "forecaster": {"checkpoint": str(model)},
            "alerting": {"threshold": -100.0, "min_duration_s": 0.3, "update_interval_s": 5.0},
            "kafka": {"spool_dir": str(tmp / "spool")},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": str(tmp / "alerts.jsonl")},
        }
    )
    s = Service(cfg).run(max_seconds=seconds)
    frames = sum(s.frames.values())
    lat = np.array(s.alert_latencies) if s.alert_latencies else np.array([np.nan])
    row = {
        "scenario": name,
        "cameras": len(cameras),
        "frames": frames,
        "seconds": s.seconds,
        "fps": frames / s.seconds,
        "startup_s": s.startup_s,
        "steady_fps": frames / max(s.seconds - s.startup_s, 1e-9),
        "dropped": sum(s.dropped.values()),
        "alerts": sum(s.alerts.values()),
        "latency_p50_s": float(np.nanpercentile(lat, 50)),
        "latency_p95_s": float(np.nanpercentile(lat, 95)),
    }
    print(
        f"{name:<22}{row['cameras']:>4}{frames:>8}{row['fps']:>9.2f}{row['steady_fps']:>9.2f}{row['dropped']:>9}"
        f"{row['alerts']:>8}{row['latency_p50_s']:>9.2f}{row['latency_p95_s']:>9.2f}",
        flush=True,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/service_speed.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"{'scenario':<22}{'cams':>4}{'frames':>8}{'fps':>9}{'steady':>9}{'dropped':>9}{'alerts':>8}{'p50 s':>9}{'p95 s':>9}"
    )
    rows = [
        scenario("1 camera, fast", args.model, {"lawn": {"source": str(VIDEO)}}, args.seconds),
        scenario(
            "1 camera, paced 10fps",
            args.model,
            {"lawn": {"source": str(VIDEO), "pace": True}},
            args.seconds,
        ),
        scenario(
            "4 cameras, fast",
            args.model,
            {f"cam{i}": {"source": str(VIDEO)} for i in range(4)},
            args.seconds,
        ),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"video": "vtest.avi (795 frames, 10 fps)", "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
