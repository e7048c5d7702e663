"""Alerts to Kafka over TLS, end to end: the embedded tansu broker behind a real TLS
terminator (stunnel4) with certificates made for the test; the `run` service with
``security_protocol: SSL``; a wrong CA and an expired certificate (one clear line, counted,
alerts kept in the spool and delivered after the fix and a restart); a refused SASL
mechanism."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.run_service import Service
from pipelines.spool import DiskSpool
from tests.security_support import (
    Pki,
    TlsBroker,
    create_topic,
    make_pki,
    metric,
    read_topic,
    service_config,
    ssl_client,
    start_service,
    tiny_checkpoint,
    walking_frames,
)

pytestmark = pytest.mark.broker


@pytest.fixture(autouse=True)
def one_torch_thread() -> object:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def _tls_service(tmp: Path, ckpt: Path, bootstrap: str, cafile: Path) -> Service:
    cfg = service_config(
        tmp,
        ckpt,
        kafka={
            "bootstrap_servers": [bootstrap],
            "security_protocol": "SSL",
            "ssl_cafile": str(cafile),
            "spool_dir": str(tmp / "spool"),
        },
    )
    return Service(load_config(data=cfg))


def _alerts_file(tmp: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (tmp / "alerts.jsonl").read_text().splitlines()]


def test_run_delivers_alerts_over_tls(tmp_path: Path, pki: Pki, ckpt: Path) -> None:
    with TlsBroker(tmp_path).start(pki.server) as tls:
        create_topic(tls.bootstrap, ssl_client(pki.ca))
        service = _tls_service(tmp_path, ckpt, tls.bootstrap, pki.ca)
        start_service(service)
        service.handle_poses(walking_frames())
        service.shutdown()
        assert service.summary.delivered
        local = _alerts_file(tmp_path)
        assert len(local) >= 4 and {a["type"] for a in local} >= {"new", "end"}
        got = read_topic(tls.bootstrap, ssl_client(pki.ca), len(local))
        assert [json.loads(v)["alert_id"] for _, v in got] == [a["alert_id"] for a in local]
        assert {k for k, _ in got} == {"gate"}
        body = service.metrics.render().decode()
        assert metric(body, "posewatch_alerts_published_total") == len(local)
        assert metric(body, "posewatch_publish_errors_total") == 0
        assert DiskSpool(tmp_path / "spool").pending() == 0


def test_score_consumes_and_delivers_over_tls(tmp_path: Path, pki: Pki, ckpt: Path) -> None:
    """`posewatch score`: pose messages in and alerts out, both over TLS."""
    import threading

    from kafka import KafkaProducer

    from pipelines.detect_service import encode_poseframe
    from pipelines.score_service import ScoreService

    client = ssl_client(pki.ca)
    frames = walking_frames()
    with TlsBroker(tmp_path).start(pki.server) as tls:
        for topic in ("posewatch.poses", "posewatch.poses.dlq", "posewatch.alerts"):
            create_topic(tls.bootstrap, client, topic)
        producer = KafkaProducer(bootstrap_servers=tls.bootstrap, acks="all", **client)
        for f in frames:
            producer.send("posewatch.poses", key=b"gate", value=encode_poseframe(f))
        producer.flush(30)
        producer.close()
        cfg = service_config(tmp_path, ckpt, kafka={
            "bootstrap_servers": [tls.bootstrap], "security_protocol": "SSL",
            "ssl_cafile": str(pki.ca), "spool_dir": str(tmp_path / "spool"),
        })  # fmt: skip
        service = ScoreService(load_config(data=cfg))
        done: dict[str, object] = {}
        th = threading.Thread(target=lambda: done.update(s=service.run(max_seconds=120)))
        th.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and service.consumed < len(frames):
            time.sleep(0.3)
        service.stop()
        th.join(60)
        assert service.consumed == len(frames)
        local = _alerts_file(tmp_path)
        assert len(local) >= 4
        got = read_topic(tls.bootstrap, client, len(local))
        assert [json.loads(v)["alert_id"] for _, v in got] == [a["alert_id"] for a in local]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-ca", "certificate verify failed: unable to get local issuer certificate"),
        ("expired", "certificate verify failed: certificate has expired"),
    ],
)
def test_tls_failure_is_one_clear_line_counted_and_the_spool_delivers_after_the_fix(
    tmp_path: Path, pki: Pki, ckpt: Path, caplog: pytest.LogCaptureFixture, case: str, reason: str
) -> None:
    caplog.set_level(logging.INFO)
    with TlsBroker(tmp_path).start(pki.server) as tls:
        create_topic(tls.bootstrap, ssl_client(pki.ca))
        if case == "expired":
            tls.serve(pki.expired)
        cafile = pki.other_ca if case == "wrong-ca" else pki.ca
        broken = _tls_service(tmp_path, ckpt, tls.bootstrap, cafile)
        start_service(broken)
        broken.handle_poses(walking_frames())
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and broken.metrics.publish_errors._value.get() < 1:
            time.sleep(0.2)
        broken.shutdown()
        local = _alerts_file(tmp_path)
        assert len(local) >= 4
        assert not broken.summary.delivered
        body = broken.metrics.render().decode()
        assert metric(body, "posewatch_publish_errors_total") >= 1
        assert metric(body, "posewatch_alerts_published_total") == 0
        # One line of ours names the broker and the TLS error.
        ours = [r.getMessage() for r in caplog.records
                if r.name.startswith("pipelines") and r.levelno >= logging.WARNING
                and "TLS" in r.getMessage()]  # fmt: skip
        assert len(ours) == 1, ours
        assert f"delivery to {tls.bootstrap} failed" in ours[0] and reason in ours[0], ours[0]
        # Every alert waits in the spool.
        assert DiskSpool(tmp_path / "spool").pending() == len(local)

        # The fix (the right CA, a renewed certificate), then a restart: all delivered.
        if case == "expired":
            tls.serve(pki.server)
        fixed = _tls_service(tmp_path, ckpt, tls.bootstrap, pki.ca)
        start_service(fixed)
        fixed.shutdown()
        assert fixed.summary.delivered
        assert DiskSpool(tmp_path / "spool").pending() == 0
        # Each alert once (the counter), in order.
        got = read_topic(tls.bootstrap, ssl_client(pki.ca), len(local))
        assert [json.loads(v)["alert_id"] for _, v in got] == [a["alert_id"] for a in local]
        assert metric(fixed.metrics.render().decode(), "posewatch_alerts_published_total") == len(
            local
        )


def test_refused_sasl_mechanism_is_reported_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tansu refuses SASL PLAIN: one line of ours says so (not a generic timeout), every
    failed round is counted, the password appears nowhere."""
    from pipelines.broker import EmbeddedBroker
    from pipelines.kafka_sink import KafkaAlertSink
    from pipelines.kafka_util import ensure_topic
    from pipelines.metrics import Metrics

    caplog.set_level(logging.DEBUG)
    password = "Sasl-Pw/NeverLogged#42"
    m = Metrics()
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        sink = KafkaAlertSink(
            [broker.bootstrap], "posewatch.alerts", tmp_path / "spool", on_delivery=m.on_delivery,
            retry_backoff_s=0.2, max_backoff_s=0.5,
            producer_config={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                             "sasl_plain_username": "posewatch", "sasl_plain_password": password},
        )  # fmt: skip
        try:
            for i in range(3):
                sink.publish("gate", json.dumps({"i": i}).encode())
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and m.publish_errors._value.get() < 6:
                time.sleep(0.2)
        finally:
            sink.close(timeout=0.5)
    assert m.publish_errors._value.get() >= 6  # two failed rounds of 3 alerts at least
    assert DiskSpool(tmp_path / "spool").pending() == 3
    ours = [r.getMessage() for r in caplog.records
            if r.name.startswith("pipelines") and r.levelno >= logging.WARNING]  # fmt: skip
    assert len(ours) == 1, ours
    assert "refused SASL mechanism PLAIN" in ours[0] and broker.bootstrap in ours[0]
    assert all(password not in r.getMessage() for r in caplog.records)
