"""Cameras of a service: their sources, the pose model, and their metrics.

:class:`CameraMonitor` feeds each source's counters (frames read, dropped, reconnects) and
status into the metrics and collects source errors; :func:`observe_detected` records the
per-camera metrics of a detected frame. Used by ``posewatch run`` and ``posewatch detect``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import fields

from detector.pose_model import PoseModel
from detector.sources import CameraSource, Frame, SourceConfig
from detector.stage import DetectedFrame, DetectStage
from pipelines.config import PosewatchConfig
from pipelines.metrics import Metrics
from pipelines.service_base import ServiceBase

log = logging.getLogger(__name__)


class CameraMonitor:
    """Feeds each camera's source counters and status into the metrics; collects errors."""

    def __init__(self, sources: dict[str, CameraSource], metrics: Metrics):
        self.sources = sources
        self.metrics = metrics
        self._read = dict.fromkeys(sources, 0)
        self._dropped = dict.fromkeys(sources, 0)
        self._reconnects = dict.fromkeys(sources, 0)
        self._skipped = dict.fromkeys(sources, 0)
        self.errors: dict[str, str] = {}

    def update(self) -> None:
        m = self.metrics
        for n, src in self.sources.items():
            st = src.stats()
            m.set_camera_status(n, st.status.value)
            m.frames_read.labels(camera=n).inc(st.frames_read - self._read[n])
            m.frames_dropped.labels(camera=n).inc(st.frames_dropped - self._dropped[n])
            m.camera_reconnects.labels(camera=n).inc(st.reconnects - self._reconnects[n])
            self._read[n], self._dropped[n] = st.frames_read, st.frames_dropped
            m.frames_skipped.labels(camera=n).inc(st.frames_skipped - self._skipped[n])
            self._reconnects[n], self._skipped[n] = st.reconnects, st.frames_skipped
            if src.error and n not in self.errors:
                self.errors[n] = src.error
                log.error("%s", src.error)


def source_config(cfg: PosewatchConfig, camera: str) -> SourceConfig:
    """The :class:`SourceConfig` of a configured camera: fields of the same name are taken
    as they are; ``source`` is the URI and the queue holds at least a detector batch."""
    c = cfg.cameras[camera]
    same = {f.name for f in fields(SourceConfig)} & set(type(c).model_fields)
    return SourceConfig(
        uri=c.source,
        queue_size=max(c.queue_frames, cfg.detector.batch_size),
        **{k: getattr(c, k) for k in same},
    )


def open_sources(cfg: PosewatchConfig) -> dict[str, CameraSource]:
    """Start a reader thread for every enabled camera."""
    return {
        n: CameraSource(n, source_config(cfg, n)).start()
        for n, c in cfg.cameras.items()
        if c.enabled
    }


def pose_model(cfg: PosewatchConfig) -> PoseModel:
    """The configured pose model, warmed up (before cameras open: a paced camera would
    drop frames during the first inference's setup)."""
    d = cfg.detector
    pose = PoseModel(d.weights, d.imgsz, d.backend, d.device, d.conf)
    pose.warmup()
    return pose


def camera_rois(cfg: PosewatchConfig) -> dict[str, tuple[int, int, int, int] | None]:
    """Each enabled camera's region of interest."""
    return {n: c.roi for n, c in cfg.cameras.items() if c.enabled}


def observe_detected(metrics: Metrics, detected: Sequence[DetectedFrame]) -> None:
    """Per-camera metrics of detected frames: decode and detect latency, frames processed,
    persons tracked."""
    lat = metrics.stage_latency
    for d in detected:
        cam = d.frame.camera
        lat.labels(camera=cam, stage="decode").observe(d.frame.decode_s)
        lat.labels(camera=cam, stage="detect").observe(d.detect_s)
        metrics.frames_processed.labels(camera=cam).inc()
        metrics.persons_tracked.labels(camera=cam).set(len(d.poses.persons))


class CameraService(ServiceBase):
    """A service that reads cameras through the detect stage (``run``, ``detect``): its
    start-up steps :meth:`init_detector` and :meth:`init_cameras`, and :meth:`detect`, one
    batch with its per-camera metrics, never fatal."""

    detecting: DetectStage | None = None
    sources: dict[str, CameraSource]
    monitor: CameraMonitor | None = None

    def init_detector(self) -> None:
        self.detecting = DetectStage(
            pose_model(self.cfg), self.cfg.detector.tracker, camera_rois(self.cfg)
        )

    def init_cameras(self) -> None:
        self.sources = open_sources(self.cfg)
        self.monitor = CameraMonitor(self.sources, self.metrics)

    def detect(
        self, batch: Sequence[Frame], handle: Callable[[list[DetectedFrame]], object]
    ) -> None:
        """Detect one batch, record its metrics and ``handle`` it; a batch that fails is
        logged, counted (``posewatch_batch_errors_total``) and skipped."""
        assert self.detecting is not None
        try:
            detected = self.detecting.process(batch)
            observe_detected(self.metrics, detected)
            handle(detected)
        except Exception:
            self.metrics.batch_errors.inc()
            cams = ", ".join(sorted({f.camera for f in batch}))
            log.exception("a batch of %d frames (%s) failed; skipped", len(batch), cams)


__all__ = [
    "CameraMonitor",
    "CameraService",
    "camera_rois",
    "observe_detected",
    "open_sources",
    "pose_model",
    "source_config",
]
