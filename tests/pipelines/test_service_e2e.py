"""posewatch run end to end: real video, real weights, a real Kafka-protocol broker."""

import json
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.alerts import Alert
from pipelines.broker import EmbeddedBroker
from pipelines.config import load_config
from pipelines.runtime import Service, ensure_topic


@pytest.mark.slow
@pytest.mark.broker
def test_run_on_real_video_delivers_every_alert(
    videos: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    from kafka import KafkaConsumer, TopicPartition

    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        cfg = load_config(
            data={
                "cameras": {
                    "lawn": {"source": str(videos / "vtest.avi")},
                    "broken": {"source": str(tmp_path / "missing.mp4")},
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
            "missing.mp4" in summary.camera_errors["broken"]
            and "does not exist" in summary.camera_errors["broken"]
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

        c = KafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        tp = TopicPartition("posewatch.alerts", 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(local) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                got.extend(recs)
        c.close()
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
