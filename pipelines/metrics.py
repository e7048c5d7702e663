"""Prometheus metrics of the service (prometheus-client).

Conventions: ``posewatch_`` prefix, one ``camera`` label name everywhere, counters end in
``_total``, latencies are histograms in seconds, ``posewatch_build_info`` carries the
version. Each :class:`Metrics` owns its registry, so tests and several services in one
process do not collide.

Example:
    >>> m = Metrics()
    >>> m.frames_read.labels(camera="gate").inc()
    >>> b"posewatch_frames_read_total" in m.render()
    True
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from pipelines import __version__

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGES = ("decode", "detect", "forecast", "score", "publish")
CAMERA_STATUSES = ("starting", "online", "reconnecting", "offline", "finished")
PHASES = ("offline", "learning", "training", "scoring", "failed")


class Metrics:
    """Every metric posewatch exports."""

    def __init__(self, registry: CollectorRegistry | None = None):
        r = self.registry = registry or CollectorRegistry()
        self._server: ThreadingHTTPServer | None = None
        self.build_info = Info("posewatch_build", "posewatch version", registry=r)
        self.build_info.info({"version": __version__})
        self._camera_metrics(r)
        self._alert_metrics(r)
        self._scale_out_metrics(r)

    def _camera_metrics(self, r: CollectorRegistry) -> None:
        """Cameras, detection and per-stage latency."""
        cam = ["camera"]
        self.frames_read = Counter(
            "posewatch_frames_read_total", "Frames decoded per camera", cam, registry=r
        )
        self.frames_processed = Counter(
            "posewatch_frames_processed_total",
            "Frames through detection and tracking",
            cam,
            registry=r,
        )
        self.frames_dropped = Counter(
            "posewatch_frames_dropped_total",
            "Frames dropped to keep up (newest kept)",
            cam,
            registry=r,
        )
        self.frames_skipped = Counter(
            "posewatch_frames_skipped_total",
            "Frames decoded and not detected, to keep to the camera's detect_fps",
            cam,
            registry=r,
        )
        self.camera_up = Gauge(
            "posewatch_camera_up", "1 while the camera delivers frames", cam, registry=r
        )
        self.camera_status = Gauge(
            "posewatch_camera_status",
            "1 for the camera's current status",
            ["camera", "status"],
            registry=r,
        )
        self.camera_reconnects = Counter(
            "posewatch_camera_reconnects_total", "Reconnect attempts", cam, registry=r
        )
        self.camera_phase = Gauge(
            "posewatch_camera_phase",
            "1 for the camera's model phase (cold start)",
            ["camera", "phase"],
            registry=r,
        )
        self.batch_errors = Counter(
            "posewatch_batch_errors_total",
            "Batches of frames skipped because detecting or scoring them failed (logged)",
            registry=r,
        )
        self.persons_tracked = Gauge(
            "posewatch_persons_tracked", "Persons tracked now", cam, registry=r
        )
        self.stage_latency = Histogram(
            "posewatch_stage_latency_seconds",
            "Per-stage processing time",
            ["camera", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_to_alert = Histogram(
            "posewatch_frame_to_alert_seconds",
            "From frame decode to alert published",
            cam,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.anomaly_score = Histogram(
            "posewatch_anomaly_score",
            "Smoothed per-person anomaly scores",
            cam,
            buckets=(-10, -8, -6, -5, -4, -3, -2, -1, 0, 1, 2, 4, 8, 16),
            registry=r,
        )

    def _alert_metrics(self, r: CollectorRegistry) -> None:
        """Alerts, sinks and the Kafka spool."""
        self.alerts = Counter(
            "posewatch_alerts_total", "Alerts by type", ["camera", "type"], registry=r
        )
        self.published = Counter(
            "posewatch_alerts_published_total", "Alerts acknowledged by the broker", registry=r
        )
        self.publish_errors = Counter(
            "posewatch_publish_errors_total",
            "Alert deliveries that failed (retried from the spool)",
            registry=r,
        )
        self.spool_messages = Gauge(
            "posewatch_spool_messages", "Alerts waiting in the disk spool", registry=r
        )
        self.spool_bytes = Gauge(
            "posewatch_spool_bytes", "Bytes waiting in the disk spool", registry=r
        )
        self.spool_memory = Gauge(
            "posewatch_spool_memory_messages",
            "Alerts held in memory because the disk spool cannot be written (disk full)",
            registry=r,
        )
        self.spool_memory_dropped = Gauge(
            "posewatch_spool_memory_dropped_messages",
            "Alerts dropped because the memory backlog of an unwritable spool was full",
            registry=r,
        )
        self.spool_write_errors = Gauge(
            "posewatch_spool_write_errors",
            "Failed writes to the disk spool since start (disk full, I/O error)",
            registry=r,
        )
        self.spool_torn = Gauge(
            "posewatch_spool_torn_records",
            "Torn records (crash or full disk mid-append) cut off the spool at start",
            registry=r,
        )
        self.delivery_age = Gauge(
            "posewatch_delivery_age_seconds",
            "Seconds since the last acknowledged alert delivery while alerts wait (0: none)",
            registry=r,
        )
        self.spool_dropped = Gauge(
            "posewatch_spool_dropped_messages",
            "Alerts dropped because the spool was full",
            registry=r,
        )

        self.sink_alerts = Counter(
            "posewatch_sink_alerts_total", "Alerts a sink accepted", ["sink"], registry=r
        )
        self.sink_errors = Counter(
            "posewatch_sink_errors_total",
            "Alerts or frames a sink failed to take (the other sinks still got them)",
            ["sink"],
            registry=r,
        )
        self.sink_latency = Histogram(
            "posewatch_sink_publish_seconds",
            "Time a sink took to accept an alert",
            ["sink"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def _scale_out_metrics(self, r: CollectorRegistry) -> None:
        """The split services: scoring, consuming, dead letters, lag, pose publishing."""
        cam = ["camera"]
        self.windows_scored = Counter(
            "posewatch_windows_scored_total", "Person windows scored", cam, registry=r
        )
        self.messages_consumed = Counter(
            "posewatch_messages_consumed_total",
            "Pose messages consumed (posewatch score)",
            ["partition"],
            registry=r,
        )
        self.messages_invalid = Counter(
            "posewatch_messages_invalid_total",
            "Malformed messages sent to the dead-letter topic",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "posewatch_consumer_lag",
            "Pose messages not yet processed, per partition",
            ["partition"],
            registry=r,
        )
        self.poses_published = Counter(
            "posewatch_poses_published_total",
            "PoseFrames acknowledged on the poses topic (posewatch detect)",
            cam,
            registry=r,
        )
        self.poses_dropped = Counter(
            "posewatch_poses_dropped_total",
            "PoseFrames that could not be published (broker unreachable)",
            cam,
            registry=r,
        )

    def set_camera_status(self, camera: str, status: str) -> None:
        """One-hot status gauge plus ``camera_up``."""
        for s in CAMERA_STATUSES:
            self.camera_status.labels(camera=camera, status=s).set(1.0 if s == status else 0.0)
        self.camera_up.labels(camera=camera).set(1.0 if status == "online" else 0.0)

    def set_phase(self, camera: str, phase: str) -> None:
        for p in PHASES:
            self.camera_phase.labels(camera=camera, phase=p).set(1.0 if p == phase else 0.0)

    def on_delivery(self, ok: bool, n: int) -> None:
        """Hook for :class:`pipelines.kafka_sink.KafkaAlertSink`."""
        (self.published if ok else self.publish_errors).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> int:
        """Serve the metrics over HTTP on ``host:port`` (port 0: a free one) from a daemon
        thread; returns the bound port.

        The endpoint takes no input: ``GET`` (or ``HEAD``) of any path, with any query,
        answers the whole exposition (``/metrics`` by convention); query parameters do not
        filter it; every other method is refused with 405 without reading a body; errors
        echo nothing of the request; nothing is logged per request.

        Raises:
            OSError: the address cannot be bound (port in use, unknown address).
        """
        server = _metrics_server(host, port, self.registry)
        self._server = server
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving (when :meth:`serve` was called)."""
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            self._server = None


class _MetricsHandler(BaseHTTPRequestHandler):
    """Answers ``GET`` / ``HEAD`` of any path with the registry's exposition; nothing else."""

    registry: CollectorRegistry
    server_version = "posewatch"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request

    def _answer(self, body: bool) -> None:
        data = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """An empty error response that echoes nothing of the request (the default one
        echoes the request line); a method other than GET / HEAD (501 in the stdlib) is
        refused with 405 without reading its body."""
        self.close_connection = True
        code = 405 if code == 501 else code
        self.send_response(code)
        if code == 405:
            self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing is logged per request."""


def _metrics_server(host: str, port: int, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """A threading HTTP server of :class:`_MetricsHandler` bound to ``host:port``."""
    handler = type("Handler", (_MetricsHandler,), {"registry": registry})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type(
        "MetricsServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True}
    )
    return cast(ThreadingHTTPServer, server_cls((host, port), handler))
