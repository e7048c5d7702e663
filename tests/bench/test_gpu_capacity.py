"""bench/gpu_capacity.py runs end to end on the CPU (its GPU run needs an accelerator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
VIDEO = ROOT / ".." / "shared" / "data" / "video" / "demo_skeleton.mp4"


@pytest.mark.skipif(not VIDEO.is_file(), reason="needs ../shared/data/video")
def test_capacity_steps_up_and_reports_cameras_stages_and_rates(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "capacity.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_capacity.py"), "--model", str(model),
           "--device", "cpu", "--seconds", "6", "--fps", "2", "--max-cameras", "2",
           "--threshold", "0.0", "--threads", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    steps = res["steps"]
    assert [s["cameras"] for s in steps][:1] == [1]
    for s in steps:
        # 2 fps per camera is within a CPU's reach: every camera got about its frames
        assert s["frames"] >= 6 * s["cameras"]
        assert 0 <= s["drop_share"] <= 1
        assert set(s["busy"]) == {"decode", "detect", "forecast", "score", "publish"}
        assert s["busy"]["detect"] > 0  # the pose model ran
    assert res["cameras_sustained"] in (0, 1, 2)
    assert res["cameras_sustained"] == max((s["cameras"] for s in steps if s["ok"]), default=0)
    assert "camera(s) of 2 fps sustained on cpu" in proc.stdout
