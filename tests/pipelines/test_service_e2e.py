"""posewatch run end to end: real video, real weights, a real Kafka-protocol broker."""

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipelines.alerts import Alert
from pipelines.broker import EmbeddedBroker
from pipelines.config import load_config
from pipelines.kafka_util import ensure_topic
from pipelines.run_service import Service


def read_alerts(bootstrap: str, n: int, timeout: float = 30.0) -> list[Any]:
    """The records of the alerts topic from its beginning (at least ``n``, or what came)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    tp = TopicPartition("posewatch.alerts", 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got.extend(recs)
    c.close()
    return got


@pytest.mark.slow
@pytest.mark.broker
def test_run_on_real_video_delivers_every_alert(
    videos: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:

    broken = tmp_path / "broken.mp4"
    broken.write_text("this is not a video\n" * 100)
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        cfg = load_config(
            data={
                "cameras": {
                    "lawn": {"source": str(videos / "vtest.avi")},
                    # A file that is not a video: an error for good (a missing file, by
                    # contrast, is looked for again: tests/detector/test_sources.py).
                    "broken": {"source": str(broken)},
                },
                "forecaster": {"checkpoint": str(trained_checkpoint), "stride": 2},
                "alerting": {"threshold": -100.0, "min_duration_s": 0.5, "update_interval_s": 2.0},
                "kafka": {
                    "bootstrap_servers": [broker.bootstrap],
                    "spool_dir": str(tmp_path / "spool"),
                },
                "metrics": {"port": 0},
                "outputs": {
                    "alerts_jsonl": str(tmp_path / "alerts.jsonl"),
                    "snapshots": str(tmp_path / "snap"),
                },
            }
        )
        service = Service(cfg)
        summary = service.run(max_seconds=600)
        assert summary.frames == {"lawn": 795}  # every frame; the broken camera did not stop it
        assert (
            "broken.mp4" in summary.camera_errors["broken"]
            and "not a video" in summary.camera_errors["broken"]
        )
        assert summary.delivered
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'posewatch_frames_processed_total{camera="lawn"} 795.0' in body
        assert 'posewatch_frames_read_total{camera="lawn"} 795.0' in body
        assert 'posewatch_camera_status{camera="broken",status="offline"} 1.0' in body

        lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
        local = [Alert.model_validate(json.loads(x)) for x in lines]
        assert len(local) >= 10 and {a.type for a in local} == {"new", "update", "end"}
        news = {a.alert_id for a in local if a.type == "new"}
        ends = {a.alert_id for a in local if a.type == "end"}
        assert news == ends  # every episode is closed (track lost, or the run ended)
        assert len(list((tmp_path / "snap").glob("*.jpg"))) == len(news)

        got = read_alerts(broker.bootstrap, len(local))
        remote = [(r.key.decode(), Alert.model_validate(json.loads(r.value))) for r in got]
        assert all(k == a.camera == "lawn" for k, a in remote)
        assert [(a.alert_id, a.type) for _, a in remote] == [(a.alert_id, a.type) for a in local]


@pytest.mark.slow
@pytest.mark.broker
def test_sigterm_ends_open_episodes_and_exits_zero(
    videos: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    import yaml

    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        cfg = {
            "cameras": {"lawn": {"source": str(videos / "vtest.avi"), "pace": True, "loop": True}},
            "forecaster": {"checkpoint": str(trained_checkpoint), "stride": 2},
            "alerting": {"threshold": -100.0, "min_duration_s": 0.3, "update_interval_s": 60.0},
            "kafka": {
                "bootstrap_servers": [broker.bootstrap],
                "spool_dir": str(tmp_path / "spool"),
            },
            "metrics": {"port": 0},
            "outputs": {"alerts_jsonl": str(tmp_path / "alerts.jsonl")},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        exe = Path(sys.executable).with_name("posewatch")
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(tmp_path / "c.yaml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "YOLO_OFFLINE": "1"},
        )
        alerts = tmp_path / "alerts.jsonl"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if alerts.exists() and alerts.read_text().count('"type":"new"') >= 3:
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out.decode()[-2000:]
        msgs = [json.loads(x) for x in alerts.read_text().splitlines()]
        news = {m["alert_id"] for m in msgs if m["type"] == "new"}
        ends = {m["alert_id"] for m in msgs if m["type"] == "end"}
        assert len(news) >= 3 and news == ends  # every open episode got its end
        assert b"frames: lawn:" in out


@pytest.mark.slow
@pytest.mark.broker
def test_cold_start_learns_the_scene_then_scores(videos: Path, tmp_path: Path) -> None:
    cfg = load_config(
        data={
            "cameras": {"lawn": {"source": str(videos / "vtest.avi"), "loop": True}},
            "cold_start": {
                "learn_minutes": 0.5,  # 300 frames of the 10 fps video
                "members": 1,  # the ensemble is test_learning's; this one is the service path
                "epochs": 3,
                "hidden": 48,
                "flow_layers": 2,
                "save_dir": str(tmp_path / "models"),
            },
            "alerting": {"threshold": -100.0, "min_duration_s": 0.3},  # every scored person
            "kafka": {"spool_dir": str(tmp_path / "spool")},
            "metrics": {"port": 0},
            "outputs": {"alerts_jsonl": str(tmp_path / "alerts.jsonl")},
        }
    )
    service = Service(cfg)
    summary = service.run(max_seconds=600, max_frames=1300)
    assert summary.frames["lawn"] >= 1300
    assert summary.phases == {"lawn": "scoring"}
    assert (tmp_path / "models" / "lawn.pt").exists()
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert 'posewatch_camera_phase{camera="lawn",phase="scoring"} 1.0' in body
    assert 'posewatch_camera_phase{camera="lawn",phase="learning"} 0.0' in body
    alerts = [
        Alert.model_validate(json.loads(x))
        for x in (tmp_path / "alerts.jsonl").read_text().splitlines()
    ]
    # Nothing is scored while learning (the first 300 frames), then every person alerts.
    assert len(alerts) >= 5
    assert min(a.frame_index for a in alerts if a.type == "new") >= 300


@pytest.mark.slow
@pytest.mark.broker
def test_broker_outage_of_20s_loses_no_alert(
    videos: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    import threading

    broker = EmbeddedBroker().start()
    ensure_topic(broker.bootstrap, "posewatch.alerts")
    jsonl = tmp_path / "alerts.jsonl"
    cfg = load_config(
        data={
            "cameras": {"lawn": {"source": str(videos / "vtest.avi")}},
            "forecaster": {"checkpoint": str(trained_checkpoint)},
            "alerting": {"threshold": -100.0, "min_duration_s": 0.3, "update_interval_s": 1.0},
            "kafka": {"bootstrap_servers": [broker.bootstrap], "spool_dir": str(tmp_path / "sp")},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": str(jsonl)},
        }
    )
    service = Service(cfg)
    result: dict[str, object] = {}
    runner = threading.Thread(target=lambda: result.update(s=service.run(max_seconds=600)))
    runner.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (
            not jsonl.exists() or len(jsonl.read_text().splitlines()) < 5
        ):
            time.sleep(0.2)
        broker.stop()  # outage while alerts are being produced
        n_before = len(jsonl.read_text().splitlines())
        time.sleep(20)
        during = len(jsonl.read_text().splitlines()) - n_before
        broker = EmbeddedBroker(port=broker.port).start()  # memory storage: starts empty
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        runner.join(timeout=600)
        summary = result["s"]
        assert summary.delivered  # type: ignore[attr-defined]
        assert during >= 5, "alerts kept coming during the outage"
        lines = jsonl.read_text().splitlines()
        local = [Alert.model_validate(json.loads(x)) for x in lines[n_before:]]
        got = read_alerts(broker.bootstrap, len(local))
        remote = [Alert.model_validate(json.loads(r.value)) for r in got]
        ids = [(a.alert_id, a.type, a.frame_index) for a in remote]
        # Every alert from the outage on arrived after the restart, in order; the ones
        # produced before it that were still in flight may arrive again (at least once).
        want = [(a.alert_id, a.type, a.frame_index) for a in local]
        assert ids[-len(want) :] == want
    finally:
        service.stop()
        runner.join(timeout=60)
        broker.stop()
