"""``posewatch detect``: cameras -> batched YOLO-pose -> per-camera tracking -> one
``PoseFrame`` JSON message per camera frame on ``posewatch.poses``, keyed by camera id (the
scale-out half of ``posewatch run`` that runs next to the cameras / GPUs).

Per-camera order is kept: messages are keyed by camera (one partition per camera) and the
producer has one request in flight. Poses are live data: while the broker is unreachable the
producer buffers (``buffer_memory``) and then drops the newest poses, counting them in
``posewatch_poses_dropped_total`` — they are not spooled to disk (alerts are).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

from detector.pose import PoseFrame
from detector.tracking import CameraTracker
from pipelines.config import PosewatchConfig
from pipelines.metrics import Metrics
from pipelines.runtime import (
    CameraMonitor,
    RuntimeConfigError,
    Stoppable,
    bound_heap_growth,
    inside_roi,
    kafka_client_config,
    open_sources,
    pose_model,
)

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


class DetectService(Stoppable):
    """Detect and track on every camera, publish PoseFrames.

    Arguments:
        cfg: configuration (``kafka.bootstrap_servers`` is required).
        metrics: metrics registry (a new one by default).
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        if not cfg.kafka.bootstrap_servers:
            raise RuntimeConfigError(
                "posewatch detect needs kafka.bootstrap_servers: the cluster the "
                "`posewatch score` members consume from"
            )
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.metrics_port: int | None = None

    def run(self, max_seconds: float | None = None, max_frames: int | None = None) -> DetectSummary:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        from detector.muxer import FrameMuxer

        cfg = self.cfg
        bound_heap_growth()
        t0 = time.monotonic()
        summary = DetectSummary()
        if cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
        producer = KafkaProducer(
            bootstrap_servers=cfg.kafka.bootstrap_servers,
            client_id=f"{cfg.kafka.client_id}-detect",
            acks="all",
            retries=10,
            max_in_flight_requests_per_connection=1,
            linger_ms=5,
            max_block_ms=2000,
            **kafka_client_config(cfg),
        )
        pose = pose_model(cfg)
        sources = open_sources(cfg)
        monitor = CameraMonitor(sources, self.metrics)
        trackers = {n: CameraTracker(n, cfg.detector.tracker) for n in sources}
        mux = FrameMuxer(
            list(sources.values()), cfg.detector.batch_size, cfg.detector.batch_timeout_ms / 1000
        )
        m = self.metrics

        def delivered(camera: str, ok: bool) -> None:
            if ok:
                summary.published += 1
                m.poses_published.labels(camera=camera).inc()
            else:
                summary.dropped += 1
                m.poses_dropped.labels(camera=camera).inc()

        try:
            while not self._stop.is_set():
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                if max_frames is not None and sum(summary.frames.values()) >= max_frames:
                    break
                monitor.update()
                batch = mux.next_batch(idle_timeout=0.5)
                if not batch:
                    if mux.done:
                        break
                    continue
                t_det = time.perf_counter()
                dets = pose.predict([f.image for f in batch])
                det_s = (time.perf_counter() - t_det) / len(batch)
                for f, d in zip(batch, dets, strict=True):
                    pf = trackers[f.camera].update(d, f.index, f.timestamp, f.image)
                    roi = cfg.cameras[f.camera].roi
                    if roi is not None:
                        pf.persons = [p for p in pf.persons if inside_roi(p.bbox, roi)]
                    m.stage_latency.labels(camera=f.camera, stage="decode").observe(f.decode_s)
                    m.stage_latency.labels(camera=f.camera, stage="detect").observe(det_s)
                    m.frames_processed.labels(camera=f.camera).inc()
                    m.persons_tracked.labels(camera=f.camera).set(len(pf.persons))
                    summary.frames[f.camera] = summary.frames.get(f.camera, 0) + 1
                    summary.persons += len(pf.persons)
                    t_pub = time.perf_counter()
                    try:
                        fut = producer.send(
                            cfg.kafka.poses_topic,
                            key=f.camera.encode(),
                            value=encode_poseframe(pf),
                        )
                        fut.add_callback(lambda _md, c=f.camera: delivered(c, True))
                        fut.add_errback(lambda _e, c=f.camera: delivered(c, False))
                    except KafkaError as exc:  # buffer full / broker unreachable: drop, count
                        delivered(f.camera, False)
                        log.warning("pose of %s frame %d dropped: %s", f.camera, f.index, exc)
                    m.stage_latency.labels(camera=f.camera, stage="publish").observe(
                        time.perf_counter() - t_pub
                    )
        finally:
            for src in sources.values():
                src.stop()
            monitor.update()
            summary.camera_errors = dict(monitor.errors)
            producer.flush(timeout=30)
            producer.close(timeout=10)
        summary.seconds = time.monotonic() - t0
        return summary


__all__ = ["DetectService", "DetectSummary", "encode_poseframe"]
