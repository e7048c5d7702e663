"""One router fans every alert out to the sinks, with metrics labelled by ``sink``.

A sink that raises is counted (``posewatch_sink_errors_total{sink}``) and logged; the other
sinks still get the alert, and the service keeps running. An alert a *required* sink
(:attr:`~pipelines.sinks.base.AlertSink.required`) failed to take is kept (in order, at most
``retry_max`` per sink) and offered again at every :meth:`AlertRouter.tick` and
:meth:`AlertRouter.flush`; while any waits, ``flush`` reports False (``posewatch score`` does
not commit), and once the sink takes them again everything goes on by itself. Alerts counted per type and
camera (``posewatch_alerts_total``), per sink (``posewatch_sink_alerts_total``), time spent
in each sink (``posewatch_sink_publish_seconds``) and, for alerts of a live frame, the
frame-to-alert latency.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

from pipelines.alerts import Alert
from pipelines.metrics import Metrics
from pipelines.sinks.base import AlertSink, FrameView

log = logging.getLogger(__name__)


class AlertRouter:
    """Fans alerts and frames out to ``sinks``.

    Arguments:
        sinks: the configured sinks (see :func:`pipelines.sinks.build_sinks`).
        metrics: metrics registry.
    """

    def __init__(self, sinks: Sequence[AlertSink], metrics: Metrics, retry_max: int = 10_000):
        self.sinks = list(sinks)
        self.metrics = metrics
        self.counts: dict[str, int] = {}  # alert type -> alerts routed
        self.retry_max = retry_max
        #: Alerts required sinks failed to take, in order, offered again (sink name ->).
        self.waiting: dict[str, deque[tuple[Alert, FrameView | None]]] = {}
        #: Alerts dropped because a required sink's waiting list was full (never taken).
        self.lost: dict[str, int] = {}
        self.latencies: list[float] = []  # frame decode -> alert routed, s (first 100k)

    def publish(self, alerts: Sequence[Alert], view: FrameView | None = None) -> None:
        """Route alerts (those of one frame, with its view when there is one)."""
        m = self.metrics
        for a in alerts:
            m.alerts.labels(camera=a.camera, type=a.type).inc()
            self.counts[a.type] = self.counts.get(a.type, 0) + 1
            t_all = time.perf_counter()
            for sink in self.sinks:
                if self.waiting.get(sink.name):  # keep the order behind what waits
                    self._wait(sink, a, view)
                    continue
                self._offer(sink, a, view)
            m.stage_latency.labels(camera=a.camera, stage="publish").observe(
                time.perf_counter() - t_all
            )
            # Frame-to-alert for alerts a frame triggered; an `end` of a lost track refers to
            # its last sighting, which can be seconds old.
            if view is not None and view.read_at is not None and a.type != "end":
                lat = time.monotonic() - view.read_at
                m.frame_to_alert.labels(camera=a.camera).observe(lat)
                if len(self.latencies) < 100_000:
                    self.latencies.append(lat)

    def _offer(self, sink: AlertSink, a: Alert, view: FrameView | None) -> bool:
        """Publish to one sink; on failure count it and, for a required sink, keep it."""
        m = self.metrics
        t0 = time.perf_counter()
        try:
            sink.publish(a, view)
        except Exception as exc:  # one sink must not stop the others
            m.sink_errors.labels(sink=sink.name).inc()
            if sink.required:
                if not self.waiting.get(sink.name):  # once per episode of failures
                    log.error(
                        "sink %s: alert %s not taken (%s); alerts wait and are offered again",
                        sink.name, a.alert_id, exc,
                    )  # fmt: skip
                self._wait(sink, a, view)
            else:
                log.error("sink %s: alert %s not taken: %s", sink.name, a.alert_id, exc)
            return False
        finally:
            m.sink_latency.labels(sink=sink.name).observe(time.perf_counter() - t0)
        m.sink_alerts.labels(sink=sink.name).inc()
        return True

    def _wait(self, sink: AlertSink, a: Alert, view: FrameView | None) -> None:
        q = self.waiting.setdefault(sink.name, deque())
        if len(q) >= self.retry_max:
            q.popleft()
            self.lost[sink.name] = self.lost.get(sink.name, 0) + 1
        q.append((a, view))

    def retry(self) -> bool:
        """Offer waiting alerts again, oldest first; True when none waits any more."""
        for sink in self.sinks:
            q = self.waiting.get(sink.name)
            while q:
                a, view = q[0]
                t0 = time.perf_counter()
                try:
                    sink.publish(a, view)
                except Exception:
                    self.metrics.sink_errors.labels(sink=sink.name).inc()
                    break
                finally:
                    self.metrics.sink_latency.labels(sink=sink.name).observe(
                        time.perf_counter() - t0
                    )
                q.popleft()
                self.metrics.sink_alerts.labels(sink=sink.name).inc()
                if not q:
                    log.info("sink %s takes alerts again; the waiting ones were delivered",
                             sink.name)  # fmt: skip
        return not any(self.waiting.values())

    def frame(self, view: FrameView) -> None:
        """Show one scored frame to the per-frame sinks."""
        for sink in self.sinks:
            try:
                sink.frame(view)
            except Exception as exc:
                self.metrics.sink_errors.labels(sink=sink.name).inc()
                log.error("sink %s: frame %d of %s not taken: %s", sink.name, view.frame_index,
                          view.camera, exc)  # fmt: skip

    def tick(self) -> None:
        """Offer waiting alerts again; let sinks update their gauges (once per main-loop
        round)."""
        self.retry()
        for sink in self.sinks:
            try:
                sink.tick()
            except Exception as exc:
                log.debug("sink %s: tick failed: %s", sink.name, exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """True when every sink has everything published so far: False after ``timeout``
        seconds, when a sink's flush fails, or while alerts wait for a required sink."""
        deadline = time.monotonic() + timeout
        ok = self.retry()
        for sink in self.sinks:
            try:
                ok = sink.flush(max(0.0, deadline - time.monotonic())) and ok
            except Exception as exc:
                ok = False
                self.metrics.sink_errors.labels(sink=sink.name).inc()
                log.error("sink %s: flush failed: %s", sink.name, exc)
        return ok

    def close(self, timeout: float = 15.0) -> bool:
        """Close every sink; True when none is left with undelivered alerts."""
        deadline = time.monotonic() + timeout
        ok = self.retry() and not self.lost
        for name, q in self.waiting.items():
            if q:
                log.error("sink %s: %d alerts were never taken", name, len(q))
        for sink in self.sinks:
            try:
                ok = sink.close(max(0.0, deadline - time.monotonic())) and ok
            except Exception as exc:
                ok = False
                log.error("sink %s: close failed: %s", sink.name, exc)
        return ok


__all__ = ["AlertRouter"]
