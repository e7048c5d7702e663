"""Camera metrics: reconnects, status and errors reach Prometheus."""

from __future__ import annotations

import socket
import time

from detector.sources import CameraSource, SourceConfig
from pipelines.cameras import CameraMonitor
from pipelines.metrics import Metrics


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens: connections are refused
    return port


def _value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else float(v)


def test_a_camera_reconnect_increments_the_reconnects_counter() -> None:
    m = Metrics()
    uri = f"rtsp://admin:hunter2@127.0.0.1:{_refused_port()}/live"
    src = CameraSource("gate", SourceConfig(uri=uri, retry_interval=0.1, max_backoff=0.2)).start()
    monitor = CameraMonitor({"gate": src}, m)
    try:
        deadline = time.monotonic() + 15
        seen = 0.0
        while time.monotonic() < deadline and seen < 3:
            time.sleep(0.2)
            monitor.update()
            seen = _value(m, "posewatch_camera_reconnects_total", camera="gate")
        assert seen >= 3
        assert _value(m, "posewatch_camera_up", camera="gate") == 0.0
        assert _value(m, "posewatch_camera_status", camera="gate", status="reconnecting") == 1.0
        assert b"hunter2" not in m.render()
    finally:
        src.stop()
    monitor.update()
    monitor.update()  # exported exactly once, not double-counted
    assert _value(m, "posewatch_camera_reconnects_total", camera="gate") == src.stats().reconnects
