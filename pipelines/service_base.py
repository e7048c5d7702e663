"""What every long-running service shares: named start-up and shutdown steps, stopping on
SIGTERM / SIGINT, the metrics endpoint and the process' allocator setting.

A service lists its steps (Frigate's ``start()`` of ``init_*`` steps): :meth:`start` runs
``start_steps`` in order and :meth:`shutdown` runs ``stop_steps`` in order, each step
isolated (a failing shutdown step is logged and the next one still runs), so a service
stopped half-way through its start-up releases what it had opened.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from forecasting.allocator import bound_heap_growth
from pipelines.config import PosewatchConfig
from pipelines.metrics import Metrics
from pipelines.serving import RuntimeConfigError

log = logging.getLogger(__name__)


class ServiceBase:
    """A service with named start-up / shutdown steps whose main loop ends on :meth:`stop`.

    Arguments:
        cfg: validated configuration.
        metrics: metrics registry (a new one by default).
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.metrics_port: int | None = None

    # -- steps ----------------------------------------------------------------------------
    def start_steps(self) -> Sequence[Callable[[], None]]:
        """Start-up steps, in order."""
        return (self.init_process, self.init_metrics)

    def stop_steps(self) -> Sequence[Callable[[], None]]:
        """Shutdown steps, in order."""
        return ()

    def start(self) -> None:
        """Run the start-up steps.

        Raises:
            RuntimeConfigError: a step failed for a reason the operator fixes (the metrics
                port in use, the spool folder held by another process, the embedded broker
                not starting); the message names the setting.
        """
        from kafka.errors import KafkaError

        from pipelines.broker import BrokerError
        from pipelines.kafka_errors import describe_failure, watch_network_errors
        from pipelines.kafka_util import kafka_client_config
        from pipelines.spool import SpoolLockedError

        watch_network_errors()
        for step in self.start_steps():
            try:
                step()
            except (SpoolLockedError, BrokerError) as exc:
                raise RuntimeConfigError(str(exc)) from exc
            except KafkaError as exc:  # unreachable, TLS refused, login refused, ...
                servers = ",".join(self.cfg.kafka.bootstrap_servers) or "the embedded broker"
                why = describe_failure(exc, kafka_client_config(self.cfg))
                raise RuntimeConfigError(
                    f"kafka: cannot connect to {servers} ({why}); check "
                    "kafka.bootstrap_servers and the kafka security settings"
                ) from exc

    def shutdown(self) -> None:
        for step in self.stop_steps():
            try:
                step()
            except Exception:
                log.exception("shutdown step %s failed", getattr(step, "__name__", step))

    def init_process(self) -> None:
        bound_heap_growth()

    def init_metrics(self) -> None:
        m = self.cfg.metrics
        if not m.enabled:
            return
        try:
            self.metrics_port = self.metrics.serve(m.host, m.port)
        except OSError as exc:
            raise RuntimeConfigError(
                f"metrics: cannot listen on {m.host}:{m.port} ({exc.strerror}); another "
                "process uses the port? Set metrics.port to a free port (0: any) or "
                "metrics.enabled: false"
            ) from exc
        log.info("metrics on http://%s:%d/metrics", m.host, self.metrics_port)

    # -- stopping -------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Ask the main loop to finish (signal-handler compatible)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


__all__ = ["RuntimeConfigError", "ServiceBase", "bound_heap_growth"]
