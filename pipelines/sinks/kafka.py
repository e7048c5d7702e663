"""Alerts to the Kafka alert topic (``kafka`` section), keyed by camera, through the
durable disk spool of :class:`~pipelines.kafka_sink.KafkaAlertSink` (nothing is lost while
the broker is down; at-least-once, deduplicate by ``alert_id``)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from pipelines.alerts import Alert
from pipelines.kafka_sink import KafkaAlertSink
from pipelines.metrics import Metrics
from pipelines.sinks.base import AlertSink, FrameView


class KafkaSink(AlertSink):
    """Spooled, acknowledged delivery of alerts to ``topic``.

    Arguments:
        servers: bootstrap ``host:port`` list.
        topic: alert topic.
        spool_dir: folder of the spool (one per process).
        metrics: spool gauges and delivery counters go here.
        remove_empty_spool: delete ``spool_dir`` at close when everything was delivered
            (per-member spools of ``posewatch score``).
        **kafka: :class:`KafkaAlertSink` settings (client id, spool bound, producer config).
    """

    name = "kafka"
    required = True

    def __init__(
        self,
        servers: list[str],
        topic: str,
        spool_dir: str | Path,
        metrics: Metrics,
        remove_empty_spool: bool = False,
        **kafka: Any,
    ):
        self.metrics = metrics
        self.remove_empty_spool = remove_empty_spool
        self.spool_dir = Path(spool_dir)
        self.sink = KafkaAlertSink(
            servers, topic, spool_dir, on_delivery=metrics.on_delivery, **kafka
        )

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        self.sink.publish(alert.camera, alert.model_dump_json().encode())

    def tick(self) -> None:
        self.update_metrics()

    def update_metrics(self) -> None:
        m, sink, spool = self.metrics, self.sink, self.sink.spool
        m.spool_messages.set(sink.pending())
        m.spool_dropped.set(spool.dropped)
        m.spool_memory.set(len(sink.memory))
        m.spool_memory_dropped.set(sink.memory_dropped)
        m.spool_write_errors.set(sink.spool_errors)
        m.spool_torn.set(spool.torn + spool.corrupt)
        m.delivery_age.set(sink.delivery_age())
        with contextlib.suppress(OSError):  # the sender may remove a segment meanwhile
            m.spool_bytes.set(spool.size_bytes())

    def pending(self) -> int:
        return self.sink.pending()

    def flush(self, timeout: float = 10.0) -> bool:
        ok = self.sink.flush(timeout)
        self.update_metrics()
        return ok

    def close(self, timeout: float = 10.0) -> bool:
        ok = self.sink.close(timeout)
        self.update_metrics()
        if ok and self.remove_empty_spool and self.sink.pending() == 0:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
        return ok


__all__ = ["KafkaSink"]
