"""``posewatch detect``: cameras -> detect stage (batched YOLO-pose, per-camera tracking, ROI)
-> one ``PoseFrame`` JSON message per camera frame on ``posewatch.poses``, keyed by camera id
(the scale-out half of ``posewatch run`` that runs next to the cameras / GPUs; the same
detect stage as ``run`` and ``extract``).

Per-camera order is kept: messages are keyed by camera (one partition per camera) and the
producer has one request in flight. Poses are live data: while the broker is unreachable the
producer buffers (``buffer_memory``) and then drops the newest poses, counting them in
``posewatch_poses_dropped_total`` — they are not spooled to disk (alerts are).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from detector.muxer import FrameMuxer
from detector.pose import PoseFrame
from detector.stage import DetectedFrame
from pipelines.cameras import (
    CameraService,
)
from pipelines.config import PosewatchConfig
from pipelines.kafka_util import kafka_client_config
from pipelines.metrics import Metrics
from pipelines.service_base import RuntimeConfigError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DetectSummary:
    """What a detect run did."""

    frames: dict[str, int] = field(default_factory=dict)
    persons: int = 0
    published: int = 0
    dropped: int = 0
    seconds: float = 0.0
    camera_errors: dict[str, str] = field(default_factory=dict)


def encode_poseframe(pf: PoseFrame) -> bytes:
    """The ``posewatch.poses`` message of a frame (compact JSON with ``schema_version``)."""
    return json.dumps(pf.to_dict(), separators=(",", ":")).encode()


class DetectService(CameraService):
    """Detect and track on every camera, publish PoseFrames.

    Arguments:
        cfg: configuration (``kafka.bootstrap_servers`` is required).
        metrics: metrics registry (a new one by default).

    Raises:
        RuntimeConfigError: no ``kafka.bootstrap_servers``.
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        if not cfg.kafka.bootstrap_servers:
            raise RuntimeConfigError(
                "posewatch detect needs kafka.bootstrap_servers: the cluster the "
                "`posewatch score` members consume from"
            )
        super().__init__(cfg, metrics)
        self.summary = DetectSummary()
        self.producer: Any = None
        self.sources = {}

    def start_steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.init_process,
            self.init_metrics,
            self.init_producer,
            self.init_detector,
            self.init_cameras,
        )

    def init_producer(self) -> None:
        from kafka import KafkaProducer

        cfg = self.cfg
        self.producer = KafkaProducer(
            bootstrap_servers=cfg.kafka.bootstrap_servers,
            client_id=f"{cfg.kafka.client_id}-detect",
            acks="all",
            retries=10,
            max_in_flight_requests_per_connection=1,
            linger_ms=5,
            max_block_ms=2000,
            bootstrap_timeout_ms=10_000,
            **kafka_client_config(cfg),
        )

    def run(self, max_seconds: float | None = None, max_frames: int | None = None) -> DetectSummary:
        """Detect and publish until stopped, every source finished, ``max_seconds`` passed or
        ``max_frames`` frames (all cameras) were processed."""
        t0 = time.monotonic()
        try:
            self.start()
            d = self.cfg.detector
            mux = FrameMuxer(list(self.sources.values()), d.batch_size, d.batch_timeout_ms / 1000)
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                if max_frames is not None and sum(self.summary.frames.values()) >= max_frames:
                    break
                assert self.monitor is not None and self.detecting is not None
                self.monitor.update()
                batch = mux.next_batch(idle_timeout=0.5)
                if not batch:
                    if mux.done:
                        break
                    continue
                self.detect(batch, self.publish)
        finally:
            self.shutdown()
        self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _delivered(self, camera: str, ok: bool) -> None:
        if ok:
            self.summary.published += 1
            self.metrics.poses_published.labels(camera=camera).inc()
        else:
            self.summary.dropped += 1
            self.metrics.poses_dropped.labels(camera=camera).inc()

    def publish(self, detected: Sequence[DetectedFrame]) -> None:
        """One message per frame; while the broker is unreachable poses are dropped and
        counted (they are live data, not spooled)."""
        from kafka.errors import KafkaError

        for d in detected:
            cam, pf = d.frame.camera, d.poses
            self.summary.frames[cam] = self.summary.frames.get(cam, 0) + 1
            self.summary.persons += len(pf.persons)
            t_pub = time.perf_counter()
            try:
                fut = self.producer.send(
                    self.cfg.kafka.poses_topic, key=cam.encode(), value=encode_poseframe(pf)
                )
                fut.add_callback(lambda _md, c=cam: self._delivered(c, True))
                fut.add_errback(lambda _e, c=cam: self._delivered(c, False))
            except KafkaError as exc:  # buffer full / broker unreachable: drop, count
                self._delivered(cam, False)
                log.warning("pose of %s frame %d dropped: %s", cam, pf.frame_index, exc)
            self.metrics.stage_latency.labels(camera=cam, stage="publish").observe(
                time.perf_counter() - t_pub
            )

    def stop_steps(self) -> Sequence[Callable[[], None]]:
        return (self.stop_cameras, self.close_producer)

    def stop_cameras(self) -> None:
        for src in self.sources.values():
            src.stop()
        if self.monitor is not None:
            self.monitor.update()
            self.summary.camera_errors = dict(self.monitor.errors)

    def close_producer(self) -> None:
        if self.producer is not None:
            self.producer.flush(timeout=30)
            self.producer.close(timeout=10)


__all__ = ["DetectService", "DetectSummary", "encode_poseframe"]
