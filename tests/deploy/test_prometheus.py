"""Real Prometheus (Debian's ``prometheus`` and ``promtool``): the rules are valid and fire
when they should (``promtool test rules``), and a Prometheus scraping a running
``posewatch run`` answers every metric the dashboard and the rules use through its HTTP API.
The run logs JSON lines (``--log-format json``): one line per camera state change and per
alert episode, no kafka-python chatter."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_files import METRIC, promql_expressions
from tests.web.helpers import get, run_config, tiny_checkpoint, wait_for

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
needs = pytest.mark.skipif(
    not os.environ.get("CI") and not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="Debian's prometheus is not installed (make test installs it)",
)


@needs
def test_promtool_checks_the_rules_and_every_rule_fires_and_stays_quiet() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(PROM / "rules.yml")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0 and "SUCCESS: 8 rules found" in check.stdout, check.stderr
    test = subprocess.run(["promtool", "test", "rules", str(PROM / "rules_test.yml")],
                          capture_output=True, text=True, cwd=PROM)  # fmt: skip
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    tested = yaml.safe_load((PROM / "rules_test.yml").read_text())
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    fired, quiet = set(), set()
    for t in tested["tests"]:
        for case in t["alert_rule_test"]:
            (fired if case["exp_alerts"] else quiet).add(case["alertname"])
    assert fired == names  # each rule fires on some series...
    # ...and stays quiet on others: an empty expectation, or series of other cameras /
    # partitions in the firing case (promtool fails on any alert not expected).
    assert len(quiet) >= 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(base: str, expr: str) -> list[dict[str, Any]]:
    status, body = get(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}")
    out = json.loads(body)
    assert status == 200 and out["status"] == "success", (expr, out)
    return list(out["data"]["result"])


@needs
@pytest.mark.slow
@pytest.mark.broker
def test_prometheus_scrapes_a_running_service_and_answers_every_metric_used(
    videos: Path, tmp_path: Path
) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    cam = {"source": str(videos / "vtest.avi"), "pace": True, "fps": 20.0, "loop": True}
    cfg = run_config(tmp_path, videos / "vtest.avi", ckpt)
    cfg["cameras"] = {"lawn": cam}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    exe = Path(sys.executable).with_name("posewatch")
    run = subprocess.Popen(
        [str(exe), "run", "--config", str(tmp_path / "run.yaml"), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    prom = None
    try:
        found = wait_for(lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                                           "".join(lines)), 90, what="the metrics port")  # fmt: skip
        target = f"127.0.0.1:{found.group(1)}"
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROM / "rules.yml")],
            "scrape_configs": [{"job_name": "posewatch",
                                "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(f"{base}/-/ready")[0] == 200, 60, 0.5, "Prometheus ready")

        def scraped() -> bool:
            up = query(base, 'up{job="posewatch"}')
            alerts = query(base, 'posewatch_alerts_total{type="new"}')
            return bool(up) and up[0]["value"][1] == "1" and bool(alerts)

        wait_for(scraped, 120, 1.0, "a scrape with an alert")
        time.sleep(3)  # a few more scrapes: rates have two points
        used = sorted({m for e in promql_expressions() for m in METRIC.findall(e)})
        assert len(used) >= 12
        _, body = get(f"{base}/api/v1/metadata")
        meta = json.loads(body)["data"]
        missing = [m for m in used if m not in meta and not query(base, m)]
        assert not missing, f"Prometheus does not know {missing}"
        for expr in promql_expressions():  # every panel and rule expression evaluates
            query(base, expr)
        frames = query(base, 'posewatch_frames_processed_total{camera="lawn"}')
        assert float(frames[0]["value"][1]) > 20
        assert query(base, 'posewatch_camera_up{camera="lawn"} == 1')
        assert query(base, 'posewatch_camera_phase{camera="lawn",phase="scoring"} == 1')
        assert float(query(base, "sum(posewatch_anomaly_score_count)")[0]["value"][1]) > 0
        assert query(base, 'histogram_quantile(0.5, sum by (le) '
                     '(rate(posewatch_stage_latency_seconds_bucket{stage="detect"}[1m])))')  # fmt: skip
        rules = json.loads(get(f"{base}/api/v1/rules")[1])["data"]["groups"]
        assert sum(len(g["rules"]) for g in rules) == 8
        assert all(r["health"] == "ok" for g in rules for r in g["rules"])
    finally:
        if prom is not None:
            prom.send_signal(signal.SIGTERM)
            prom.wait(30)
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=90)
        reader.join(10)
    assert run.returncode == 0, "".join(lines)[-3000:]
    assert "frames: lawn:" in out
    records = [json.loads(x) for x in lines if x.strip()]  # every log line is JSON
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert not [r for r in records if r["logger"].startswith("kafka") and r["level"] == "INFO"]
    cam = [r["message"] for r in records if r["logger"] == "detector.sources"]
    assert sum(": online" in m for m in cam) == 1  # one line per camera state change
    alerts = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    logged = [r["message"] for r in records if r["logger"] == "pipelines.alerts"]
    for kind in ("new", "end"):
        want = sorted(a["alert_id"] for a in alerts if a["type"] == kind)
        assert want and sorted(m.rsplit("id ", 1)[1] for m in logged
                               if m.startswith(f"alert {kind}:")) == want  # fmt: skip
    assert not any(m.startswith("alert update") for m in logged)  # updates are not logged
