"""The operator's view in a real headless Chromium (Debian's chromium + chromedriver,
Selenium) against a real ``posewatch run`` on vtest.avi (YOLO at 320, a tiny model, a
threshold every scored person exceeds, the embedded broker).

Screenshots of the three pages are saved in the test's folder; with
``POSEWATCH_SCREENSHOTS=DIR`` they are copied there too (``docs/screenshots`` for the README).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.web.helpers import chromium_driver, run_config, tiny_checkpoint, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CI")
        and not (shutil.which("chromium") and shutil.which("chromedriver")),
        reason="Debian's chromium and chromium-driver are not installed (make test installs them)",
    ),
]
EXE = Path(sys.executable).with_name("posewatch")


class Posewatch:
    """``posewatch run`` as a subprocess; its log is collected and the UI's URL read from it."""

    def __init__(self, config: Path, *args: str):
        self.proc = subprocess.Popen(
            [str(EXE), "run", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def url(self) -> str:
        def found() -> str | None:
            m = re.search(r"web view on (http://\S+?)/ ", self.log)
            assert self.proc.poll() is None, self.log[-3000:]
            return m.group(1) if m else None

        return str(wait_for(found, 120, what="the web view's URL in the log"))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(90)
        self.reader.join(10)
        assert self.proc.returncode == 0, self.log[-3000:]
        return self.log


def grey(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)


def shoot(driver: Any, tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.png"
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, max(900, min(height + 200, 2600)))  # the whole page
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    dest = os.environ.get("POSEWATCH_SCREENSHOTS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(dest) / path.name)
    return path


def alerts_show(db: Path, alert_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(EXE), "alerts", "show", alert_id, "--store", str(db), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def test_cameras_alerts_detail_and_a_verdict_that_survives_a_restart(
    videos: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    cam = {"source": str(videos / "vtest.avi"), "pace": True, "fps": 20.0}
    cfg = run_config(tmp_path, videos / "vtest.avi", ckpt, cameras={"lawn": cam})
    cfg["cameras"] = {"lawn": cam}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    db = tmp_path / "alerts.db"
    jsonl = tmp_path / "alerts.jsonl"

    service = Posewatch(tmp_path / "run.yaml", "--max-frames", "420")
    driver = chromium_driver(tmp_path)
    try:
        base = service.url()
        # Alerts page first, before the first episode: rows must arrive live.
        driver.get(f"{base}/alerts")
        before = {e.get_attribute("id") for e in driver.find_elements(By.CSS_SELECTOR, "tbody tr")}
        wait_for(lambda: driver.find_element(By.ID, "live-state").text == "live", 10,
                 what="the event stream")  # fmt: skip

        def new_row() -> tuple[str, float] | None:
            for e in driver.find_elements(By.CSS_SELECTOR, "tbody tr"):
                if e.get_attribute("id") not in before:
                    return str(e.get_attribute("id")), time.time()
            return None

        row_id, seen_at = wait_for(new_row, 90, step=0.05, what="an alert row")
        rows = len(driver.find_elements(By.CSS_SELECTOR, "tbody tr"))
        assert driver.find_element(By.ID, "count").text.split()[0] in (str(rows), str(rows - 1))
        alert_id = row_id.removeprefix("alert-")
        news = [json.loads(x) for x in jsonl.read_text().splitlines()]
        new = next(m for m in news if m["alert_id"] == alert_id and m["type"] == "new")
        lag = seen_at - new["produced_at"]
        assert 0 <= lag < 3.0, f"the row appeared {lag:.2f} s after its new event"
        assert new["snapshot"]["file"] == f"lawn-{alert_id}.jpg"
        assert new["snapshot"]["url"] == f"{base}/api/alerts/{alert_id}/snapshot.jpg"

        # Cameras page: the tile's image changes between two reads.
        driver.get(f"{base}/cameras")
        tile = driver.find_element(By.CSS_SELECTOR, '[data-camera="lawn"] img.live')
        wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", tile) > 0,
                 20, what="the live image")  # fmt: skip
        wait_for(lambda: driver.find_element(By.CSS_SELECTOR, '[data-field="status"]').text
                 == "online", 10, what="status online")  # fmt: skip
        a = grey(tile.screenshot_as_png)
        time.sleep(1.5)
        b = grey(tile.screenshot_as_png)
        assert a.shape == b.shape and a.shape[0] > 200
        assert float(np.abs(a - b).mean()) > 1.0, "the live image did not change"
        fps = float(driver.find_element(By.CSS_SELECTOR, '[data-field="fps"]').text)
        assert 5.0 < fps < 40.0  # paced at 20 frames/s
        assert driver.find_element(By.CSS_SELECTOR, '[data-field="phase"]').text == "scoring"
        shoot(driver, tmp_path, "cameras")

        # Wait for a few more episodes for the list's screenshot, then open ours.
        wait_for(lambda: len(jsonl.read_text().splitlines()) >= 4, 60, what="more alerts")
        driver.get(f"{base}/alerts")
        wait_for(lambda: all(driver.execute_script("return arguments[0].naturalWidth", i) > 0
                             for i in driver.find_elements(By.CSS_SELECTOR, "td.thumb img")),
                 10, what="thumbnails")  # fmt: skip
        shoot(driver, tmp_path, "alerts")
        driver.find_element(By.CSS_SELECTOR, f"#{row_id} td a").click()
        wait_for(lambda: driver.current_url.endswith(f"/alerts/{alert_id}"), 10, what="detail")
        snap = driver.find_element(By.ID, "snapshot")
        wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", snap) > 0,
                 10, what="the snapshot")  # fmt: skip
        assert driver.execute_script("return arguments[0].naturalWidth", snap) == 768
        limbs = driver.find_elements(By.CSS_SELECTOR, "#skeleton svg line")
        assert len(limbs) >= 6  # the skeleton, drawn from the alert's keypoints
        line = driver.find_element(By.CSS_SELECTOR, "#plot svg polyline").get_attribute("points")
        assert len((line or "").split()) >= 3  # the score over the episode
        assert driver.find_elements(By.CSS_SELECTOR, "#plot svg line.threshold")
        assert "gru-nf/" in driver.find_element(By.ID, "model").text

        driver.find_element(By.ID, "note").send_keys("a shadow, not a person")
        driver.find_element(By.ID, "btn-false").click()
        wait_for(lambda: driver.find_element(By.ID, "verdict-status").text
                 == "marked false alert", 10, what="the verdict saved")  # fmt: skip
        shoot(driver, tmp_path, "alert")
        shown = alerts_show(db, alert_id)
        assert (shown["verdict"], shown["verdict_note"]) == (
            "false_alert",
            "a shadow, not a person",
        )
        service.stop()

        # A restart of the service: the verdict is still there, in the page and the CLI.
        again = Posewatch(tmp_path / "run.yaml", "--max-frames", "400")
        try:
            base = again.url()
            driver.get(f"{base}/alerts/{alert_id}")
            badge = driver.find_element(By.ID, "verdict-badge").text
            assert badge == "false alert"
            assert "marked false alert" in driver.find_element(By.ID, "verdict-status").text
        finally:
            again.stop()
        assert alerts_show(db, alert_id)["verdict"] == "false_alert"
    finally:
        driver.quit()
        if service.proc.poll() is None:
            service.proc.kill()
