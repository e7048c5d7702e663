"""Delivery through a real Kafka-protocol broker (tansu), including a broker outage."""

import json
import time
from pathlib import Path

import pytest

from pipelines.broker import EmbeddedBroker
from pipelines.kafka_sink import KafkaAlertSink
from pipelines.kafka_util import ensure_topic
from pipelines.spool import DiskSpool

pytestmark = pytest.mark.broker
TOPIC = "posewatch.alerts"


def consume_all(bootstrap: str, expect: int, timeout: float = 30.0) -> list[tuple[str, dict]]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    tp = TopicPartition(TOPIC, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend((r.key.decode(), json.loads(r.value)) for r in recs)
    c.close()
    return out


def test_spool_survives_restart_and_keeps_order(tmp_path: Path) -> None:
    sp = DiskSpool(tmp_path, segment_bytes=300)
    for i in range(20):
        sp.append(f"cam{i % 2}", json.dumps({"i": i}).encode())
    sp.ack(7)
    again = DiskSpool(tmp_path, segment_bytes=300)
    assert again.pending() == 13
    assert [json.loads(v)["i"] for _, v in again.peek(100)] == list(range(7, 20))
    # A torn last line (crash mid-append) is ignored, not fatal.
    seg = sorted(tmp_path.glob("*.log"))[-1]
    with open(seg, "ab") as fh:
        fh.write(b'{"k": "cam0", "v": "AAA')
    assert [json.loads(v)["i"] for _, v in DiskSpool(tmp_path).peek(100)][-1] == 19
    bounded = DiskSpool(tmp_path / "b", max_bytes=400, segment_bytes=200)
    for i in range(30):
        bounded.append("c", json.dumps({"i": i}).encode())
    assert bounded.size_bytes() <= 400 and bounded.dropped > 0
    assert bounded.pending() + bounded.dropped == 30


def test_delivery_keys_order_and_broker_outage(tmp_path: Path) -> None:
    broker = EmbeddedBroker().start()
    try:
        ensure_topic(broker.bootstrap, TOPIC)
        sink = KafkaAlertSink(
            [broker.bootstrap], TOPIC, tmp_path / "spool", retry_backoff_s=0.2, max_backoff_s=1.0
        )
        for i in range(50):
            sink.publish(f"cam{i % 3}", json.dumps({"i": i}).encode())
        assert sink.flush(30), "delivery before the outage"
        before = consume_all(broker.bootstrap, 50)
        assert [m["i"] for _, m in before] == list(range(50))
        assert all(k == f"cam{m['i'] % 3}" for k, m in before)

        broker.stop()  # outage: alerts keep coming
        for i in range(50, 120):
            sink.publish(f"cam{i % 3}", json.dumps({"i": i}).encode())
            time.sleep(0.05)
        assert sink.pending() >= 60  # waiting on disk
        time.sleep(max(0.0, 20 - 70 * 0.05))  # the broker is down for 20 s in all
        # posewatch restarts during the outage too: a new sink picks up the same spool.
        sink.close(timeout=0.5)
        broker = EmbeddedBroker(port=broker.port).start()  # memory storage: an empty broker
        ensure_topic(broker.bootstrap, TOPIC)
        sink2 = KafkaAlertSink(
            [broker.bootstrap], TOPIC, tmp_path / "spool", retry_backoff_s=0.2, max_backoff_s=1.0
        )
        assert sink2.flush(60), f"{sink2.pending()} alerts still spooled"
        after = consume_all(broker.bootstrap, 70)
        got = [m["i"] for _, m in after]
        assert got == list(range(50, 120)), got[:10]  # every alert, in order, none lost
        sink2.close()
    finally:
        broker.stop()


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens: connections are refused
    return port


def test_broker_down_logs_delivery_failed_and_counts_publish_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pipelines.metrics import Metrics

    caplog.set_level(logging.INFO, logger="pipelines.kafka_sink")
    m = Metrics()
    port = _free_port()
    sink = KafkaAlertSink(
        [f"127.0.0.1:{port}"], TOPIC, tmp_path / "spool", on_delivery=m.on_delivery,
        retry_backoff_s=0.1, max_backoff_s=0.2,
    )  # fmt: skip
    try:
        for i in range(3):
            sink.publish("gate", json.dumps({"i": i}).encode())
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and m.publish_errors._value.get() < 1:
            time.sleep(0.1)
        # A failed round counts the alerts it tried (producer start-up against a refused
        # port takes kafka-python's bootstrap timeout, so only the first round is awaited).
        assert m.publish_errors._value.get() >= 1
        assert m.published._value.get() == 0
        warned = [r.getMessage() for r in caplog.records if "delivery to" in r.getMessage()]
        assert len(warned) == 1
        assert f"127.0.0.1:{port} failed" in warned[0] and "alerts wait in the spool" in warned[0]
        assert not any("connected to" in r.getMessage() for r in caplog.records)
        assert sink.pending() == 3
    finally:
        assert sink.close(timeout=0.5) is False  # still spooled: nothing was delivered
    assert DiskSpool(tmp_path / "spool").pending() == 3


def test_connected_is_logged_once_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="pipelines.kafka_sink")
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, TOPIC)
        sink = KafkaAlertSink([broker.bootstrap], TOPIC, tmp_path / "spool")
        sink.publish("gate", b'{"i": 0}')
        assert sink.flush(timeout=30)
        sink.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count(f"kafka: connected to {broker.bootstrap}") == 1
