"""``posewatch ui``: the web view of a split deployment (``detect`` + ``score`` on Kafka).

A consumer (group ``<kafka.client_id>-ui``) reads the alerts topic from its beginning the
first time (the store ignores messages it already has), records every alert in the alert
store (``outputs.store``; its picture drawn from the alert's keypoints on an empty canvas:
there is no camera image in this process) and shows it live. Verdicts given on the page
are kept in the same store, so ``posewatch calibrate --feedback`` reads them. Offsets are
committed after the store has the alerts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipelines.alerts import Alert
from pipelines.config import PosewatchConfig
from pipelines.kafka_util import kafka_client_config
from pipelines.metrics import Metrics
from pipelines.service_base import RuntimeConfigError, ServiceBase
from pipelines.sinks.store import StoreSink
from pipelines.sinks.ui import UiSink
from pipelines.web.app import allowed_hosts, create_app
from pipelines.web.live import LiveHub
from pipelines.web.server import UiServer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UiSummary:
    """What a ``posewatch ui`` run did."""

    messages: int = 0
    invalid: int = 0
    seconds: float = 0.0
    url: str = ""


class UiService(ServiceBase):
    """The web view over the alerts topic.

    Raises:
        RuntimeConfigError: no ``kafka.bootstrap_servers`` or no ``outputs.store``.
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        if not cfg.kafka.bootstrap_servers:
            raise RuntimeConfigError(
                "posewatch ui needs kafka.bootstrap_servers: the cluster `posewatch score` "
                "publishes alerts to"
            )
        if cfg.outputs.store is None:
            raise RuntimeConfigError("posewatch ui needs outputs.store (the alert history)")
        super().__init__(cfg, metrics)
        self.summary = UiSummary()
        cams = [n for n, c in cfg.cameras.items() if c.enabled]
        privacy = cfg.outputs.privacy != "off"
        self.hub = LiveHub(cams, cfg.ui.max_fps, cfg.ui.max_width, privacy, split=True)
        self.hub.set_states(dict.fromkeys(cams, ("remote", "scoring")))
        self.store: StoreSink | None = None
        self.sink = UiSink(self.hub)
        self.server: UiServer | None = None
        self.consumer: Any = None

    def start_steps(self) -> Sequence[Callable[[], None]]:
        return (self.init_store, self.init_server, self.init_consumer)

    def init_store(self) -> None:
        assert self.cfg.outputs.store is not None
        self.store = StoreSink(self.cfg.outputs.store, privacy=True)

    def init_server(self) -> None:
        ui = self.cfg.ui
        app = create_app(self.hub, self.cfg.outputs.store, hosts=allowed_hosts(ui.host))
        self.server = UiServer(app, ui.host, ui.port, self.hub).start()
        self.summary.url = self.server.url
        log.info("web view on %s/ (alerts of topic %s)", self.server.url, self.cfg.kafka.topic)

    def init_consumer(self) -> None:
        from kafka import KafkaConsumer

        k = self.cfg.kafka
        self.consumer = KafkaConsumer(
            k.topic,
            bootstrap_servers=k.bootstrap_servers,
            group_id=f"{k.client_id}-ui",
            client_id=f"{k.client_id}-ui",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka_client_config(self.cfg),
        )

    def run(self, max_seconds: float | None = None) -> UiSummary:
        """Read, store and show alerts until stopped or ``max_seconds`` passed."""
        t0 = time.monotonic()
        try:
            self.start()
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                polled = self.consumer.poll(timeout_ms=500)
                for records in polled.values():
                    for rec in records:
                        self.handle(rec.value)
                if polled:
                    assert self.store is not None
                    self.store.flush()
                    self.consumer.commit()
        finally:
            self.shutdown()
        self.summary.seconds = time.monotonic() - t0
        return self.summary

    def handle(self, value: bytes) -> Alert | None:
        """One message of the alerts topic: stored and shown; a malformed one is logged
        and skipped (a producer's bug must not stop the page)."""
        self.summary.messages += 1
        try:
            alert = Alert.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            self.summary.invalid += 1
            log.warning("skipped a message of %s that is not an alert: %s", self.cfg.kafka.topic,
                        str(exc).splitlines()[0][:200])  # fmt: skip
            return None
        assert self.store is not None
        self.store.publish(alert)
        self.sink.publish(alert)
        return alert

    def stop_steps(self) -> Sequence[Callable[[], None]]:
        return (self.close_consumer, self.stop_server, self.close_store)

    def close_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.close()

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()

    def close_store(self) -> None:
        if self.store is not None:
            self.store.close()


__all__ = ["UiService", "UiSummary"]
