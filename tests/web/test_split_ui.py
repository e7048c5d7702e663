"""``posewatch ui`` (split deployments): alerts read from the topic of a real (embedded)
broker into the store and onto the page; a malformed message is skipped and counted."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.broker import EmbeddedBroker
from pipelines.config import load_config
from pipelines.kafka_util import ensure_topic
from pipelines.web.service import UiService
from tests.web.helpers import episode, get, wait_for


@pytest.mark.slow
@pytest.mark.broker
def test_ui_reads_the_alerts_topic_into_the_store_and_the_page(tmp_path: Path) -> None:
    from kafka import KafkaProducer

    alerts = [a for cam in ("gate", "lawn") for al, _ in episode(cam) for a in al]
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for a in alerts:
            producer.send(
                "posewatch.alerts", key=a.camera.encode(), value=a.model_dump_json().encode()
            )
        producer.send("posewatch.alerts", key=b"gate", value=b'{"not": "an alert"}')
        producer.flush()
        producer.close()
        cfg = load_config(data={
            "cameras": {"gate": {"source": "rtsp://gate"}, "lawn": {"source": "rtsp://lawn"}},
            "kafka": {"bootstrap_servers": [broker.bootstrap]},
            "outputs": {"store": str(tmp_path / "ui.db")},
            "ui": {"port": 0},
        })  # fmt: skip
        svc = UiService(cfg)
        th = threading.Thread(target=lambda: svc.run(max_seconds=60))
        th.start()
        try:
            wait_for(lambda: svc.server is not None, 30, what="the server")
            assert svc.server is not None
            base = svc.server.url

            def stored() -> bool:
                status, body = get(f"{base}/api/alerts")
                return status == 200 and json.loads(body)["total"] == 2

            wait_for(stored, 40, 0.2, "both episodes in the store")
            wait_for(lambda: svc.summary.messages == len(alerts) + 1, 20, what="every message")
            out = json.loads(get(f"{base}/api/alerts?camera=gate")[1])["alerts"][0]
            assert out["status"] == "ended" and out["has_snapshot"]
            status, jpeg = get(f"{base}/api/cameras/lawn/frame.jpg")  # the latest skeleton
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1)
            assert status == 200 and img is not None and (img > 200).any()  # drawn lines
            states = {c["name"]: c["status"] for c in json.loads(get(f"{base}/api/cameras")[1])}
            assert states == {"gate": "remote", "lawn": "remote"}
            assert "split mode" in get(f"{base}/cameras")[1].decode()
        finally:
            svc.stop()
            th.join(30)
    assert svc.summary.invalid == 1
    assert svc.summary.messages == len(alerts) + 1
