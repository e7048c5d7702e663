"""Shared pieces of the web view's tests: a tiny forecaster, a service configuration on
vtest.avi, synthetic alerts, a headless Chromium."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from detector.pose import Person
from pipelines.alerts import Alert, AlertLifecycle
from pipelines.sinks.base import FrameView
from pipelines.track_scoring import PersonScore
from tests.conftest import tiny_checkpoint as tiny_checkpoint  # shared


def run_config(tmp: Path, video: Path, ckpt: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """``posewatch run`` on ``video``: YOLO at 320, the tiny model at K 4, a threshold every
    scored person exceeds (alerts forced), UI and metrics on free ports, files in ``tmp``."""
    cfg: dict[str, Any] = {
        "cameras": {"lawn": {"source": str(video)}},
        "detector": {"imgsz": 320},
        "forecaster": {"checkpoint": str(ckpt), "samples": 4, "stride": 3, "threads": 1},
        "alerting": {"threshold": -100.0, "min_duration_s": 0.3, "update_interval_s": 2.0},
        "kafka": {"spool_dir": str(tmp / "spool")},
        "metrics": {"port": 0},
        "outputs": {"alerts_jsonl": str(tmp / "alerts.jsonl"), "store": str(tmp / "alerts.db")},
        "ui": {"port": 0},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def wait_for(pred: Any, timeout: float, step: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):  # not listening (yet)
        return 0, b""


def walker_view(
    camera: str, t: int, image: np.ndarray | None, score: float, alerting: set[int],
    jitter: float = 0.0,
) -> FrameView:  # fmt: skip
    """A frame of one person (track 3) walking right (its joints shaking by ``jitter``
    pixels), with its score."""
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(200, 240, 17) + 2 * t
    kp[:, 1] = np.linspace(120, 360, 17)
    if jitter:
        kp[:, :2] += np.random.default_rng(t).normal(0, jitter, (17, 2))
    kp[:, 2] = 0.9
    box = np.r_[kp[:, :2].min(0) - 8, kp[:, :2].max(0) + 8].astype(np.float32)
    p = Person(3, box, 0.9, kp)
    s = PersonScore(camera, 3, t, t / 10, score, score, np.zeros(17), box, kp)
    return FrameView(camera, t, t / 10, (640, 480), [p], image, [s], 1.0, alerting, None, 10.0)


def episode(
    camera: str = "gate", n: int = 60, image: np.ndarray | None = None, start: int = 10,
    stop: int = 40, high: float = 2.5, jitter: float = 0.0, track: int = 3,
) -> Iterator[tuple[list[Alert], FrameView]]:  # fmt: skip
    """One person's score rising over a threshold of 1.0 from ``start`` to ``stop``: the
    alerts (new, end) and the frame view of each frame."""
    life = AlertLifecycle(camera, threshold=1.0, min_duration_s=0.2, update_interval_s=1.0)
    for t in range(n):
        s = high + 0.3 * np.sin(t / 3) if start <= t < stop else 0.2 + 0.01 * t
        view = walker_view(camera, t, image, float(s), set(), jitter if start <= t else 0.0)
        p = view.persons[0] = replace(view.persons[0], track_id=track)
        view.scores = [replace(view.scores[0], track_id=track)]
        alerts = life.update(track, t / 10, t, float(s), p.bbox.tolist(), p.keypoints,
                             np.linspace(0, 1, 17))  # fmt: skip
        if life.is_open(track):
            view.alerting = {track}
        yield alerts, view


def chromium_driver(tmp: Path) -> Any:
    """Headless Debian Chromium through Debian's chromedriver (Selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", f"--user-data-dir={tmp / 'chromium'}"):  # fmt: skip
        opts.add_argument(a)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=ChromeService(driver_path), options=opts)
