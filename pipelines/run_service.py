"""``posewatch run``: cameras -> detect stage -> score stage -> alert router, in one process.

A reader thread per camera (bounded queues; live cameras drop their oldest frames and count
them), one main loop that batches frames of every camera through the detect stage
(YOLO-pose, per-camera tracking, ROI), scores them in the score stage (the model provider
serves a checkpoint, or each camera learns its scene first) and routes alerts and frames to
the sinks (Kafka with its spool, JSONL, snapshots, annotated video, scores). SIGTERM /
SIGINT end the loop: open episodes get their ``end`` alerts, the sinks are flushed and
closed, the process exits 0.

Start-up steps (:meth:`Service.start_steps`): process settings, metrics endpoint, embedded
broker (when no ``kafka.bootstrap_servers``), sinks, pose model, cameras. The model provider
is built with the service, so a bad checkpoint or threshold fails before anything starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.muxer import FrameMuxer
from detector.pose import PoseFrame
from detector.sources import Frame
from detector.stage import DetectedFrame
from pipelines.broker import EmbeddedBroker
from pipelines.cameras import (
    CameraService,
)
from pipelines.config import PosewatchConfig
from pipelines.kafka_util import ensure_topic, kafka_client_config
from pipelines.metrics import Metrics
from pipelines.model_provider import make_provider
from pipelines.score_stage import ScoredFrame, ScoreStage
from pipelines.service_base import RuntimeConfigError
from pipelines.sinks import AlertRouter, FrameView, build_sinks
from pipelines.sinks.kafka import KafkaSink
from pipelines.sinks.video import AnnotatedVideoSink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunSummary:
    """What a run did."""

    frames: dict[str, int] = field(default_factory=dict)
    persons: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    alerts_file: str | None = None
    videos: list[str] = field(default_factory=list)
    bootstrap: str = ""
    topic: str = ""
    camera_errors: dict[str, str] = field(default_factory=dict)
    delivered: bool = True
    alert_latencies: list[float] = field(default_factory=list)  # frame decode -> alert, s
    dropped: dict[str, int] = field(default_factory=dict)  # camera -> frames dropped
    skipped: dict[str, int] = field(default_factory=dict)  # camera -> skipped for detect_fps
    startup_s: float = 0.0  # start -> first frame detected (broker, model load, export)
    phases: dict[str, str] = field(default_factory=dict)  # camera -> model phase at the end

    def not_detected(self) -> str:
        """The frames a camera read but detection never saw, per camera with any: those
        dropped (a live source's oldest queued frames the detector did not take in time,
        frozen-picture repeats, unreadable images of a folder) and those skipped to keep to
        the camera's ``detect_fps``; "" when every camera's frames were all detected.

        >>> RunSummary(dropped={"gate": 12, "lawn": 0}, skipped={"gate": 3, "lawn": 0}).not_detected()
        'frames not detected: gate: 12 dropped (to keep up), 3 skipped (detect_fps)'
        >>> RunSummary(dropped={"lawn": 0}, skipped={"lawn": 0}).not_detected()
        ''
        """
        parts = []
        for cam in sorted(self.dropped.keys() | self.skipped.keys()):
            d, k = self.dropped.get(cam, 0), self.skipped.get(cam, 0)
            if d or k:
                parts.append(f"{cam}: {d} dropped (to keep up), {k} skipped (detect_fps)")
        return f"frames not detected: {'; '.join(parts)}" if parts else ""


class Service(CameraService):
    """The single-process service.

    Arguments:
        cfg: validated configuration.
        metrics: metrics registry (a new one by default).

    Raises:
        RuntimeConfigError: the checkpoint cannot be served as configured (unreadable, no
            threshold, a threshold calibrated for another scorer configuration).
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        super().__init__(cfg, metrics)
        self.cameras = [n for n, c in cfg.cameras.items() if c.enabled]
        self.summary = RunSummary(topic=cfg.kafka.topic)
        self.provider = make_provider(cfg, self.cameras)
        self.scoring = ScoreStage(self.provider, cfg.alerting, cfg.forecaster.seeding)
        self.broker: EmbeddedBroker | None = None
        self.router: AlertRouter | None = None
        self.sources = {}
        self._t0 = time.monotonic()

    # -- start-up -------------------------------------------------------------------------
    def start_steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.init_process,
            self.init_metrics,
            self.init_broker,
            self.init_sinks,
            self.init_ui,
            self.init_detector,
            self.init_cameras,
        )

    def init_broker(self) -> None:
        """The bootstrap servers; starts the embedded broker when none are configured."""
        servers = list(self.cfg.kafka.bootstrap_servers)
        if not servers:
            self.broker = EmbeddedBroker().start()
            servers = [self.broker.bootstrap]
            ensure_topic(self.broker.bootstrap, self.cfg.kafka.topic)
            log.info(
                "embedded Kafka broker on %s (no kafka.bootstrap_servers configured); while "
                "this runs, read the alerts with: posewatch consume --bootstrap %s --topic %s",
                self.broker.bootstrap,
                self.broker.bootstrap,
                self.cfg.kafka.topic,
            )
        self.summary.bootstrap = ",".join(servers)

    def init_sinks(self) -> None:
        k = self.cfg.kafka
        kafka = KafkaSink(
            self.summary.bootstrap.split(","),
            k.topic,
            k.spool_dir,
            self.metrics,
            client_id=k.client_id,
            spool_max_bytes=int(k.spool_max_mb * 2**20),
            producer_config=kafka_client_config(self.cfg),
        )
        self.router = AlertRouter(build_sinks(self.cfg, kafka), self.metrics)
        jsonl = self.cfg.outputs.alerts_jsonl
        self.summary.alerts_file = str(jsonl) if jsonl is not None else None

    #: The web view's server (``ui`` section), while it runs.
    ui_server: Any = None

    def init_ui(self) -> None:
        """The operator's web view (``ui.enabled``): live cameras, alerts, verdicts."""
        if not self.cfg.ui.enabled or self.router is None:
            return
        from pipelines.web.server import start_ui

        def states() -> dict[str, tuple[str, str]]:
            return {n: (s.stats().status.value, self.phase(n)) for n, s in self.sources.items()}

        self.ui_server = start_ui(self.cfg, self.cameras, self.router, states)

    def init_cameras(self) -> None:
        super().init_cameras()
        for n in self.cameras:
            self.metrics.set_phase(n, self.phase(n))

    # -- main loop ------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None, max_frames: int | None = None) -> RunSummary:
        """Run until stopped (signal, :meth:`stop`), every source finished, ``max_seconds``
        passed or ``max_frames`` frames (all cameras) were processed."""
        self._t0 = time.monotonic()
        try:
            self.start()
            d = self.cfg.detector
            mux = FrameMuxer(list(self.sources.values()), d.batch_size, d.batch_timeout_ms / 1000)
            while not self.stopping and not self._limit_reached(max_seconds, max_frames):
                self.housekeeping()
                batch = mux.next_batch(idle_timeout=0.5)
                if not batch:
                    if mux.done:
                        break
                    continue
                if not self.summary.startup_s:
                    self.summary.startup_s = time.monotonic() - self._t0
                self.detect(batch, self.handle_detected)
        finally:
            self.shutdown()
        self.summary.seconds = time.monotonic() - self._t0
        return self.summary

    def _limit_reached(self, max_seconds: float | None, max_frames: int | None) -> bool:
        if max_seconds is not None and time.monotonic() - self._t0 > max_seconds:
            return True
        return max_frames is not None and sum(self.summary.frames.values()) >= max_frames

    def housekeeping(self) -> None:
        """Camera metrics and errors; learners of finished cameras; models that became
        ready; the model phase of every camera."""
        assert self.monitor is not None
        self.monitor.update()
        self.summary.camera_errors.update(self.monitor.errors)
        for n, src in self.sources.items():
            if src.stats().status.value in ("finished", "offline"):
                self.provider.input_ended(n)
        self.scoring.poll_models()
        if self.router is not None:
            self.router.tick()
        for n in self.cameras:
            phase = self.phase(n)
            if self.summary.phases.get(n) != phase:
                self.summary.phases[n] = phase
                self.metrics.set_phase(n, phase)

    def phase(self, camera: str) -> str:
        """The camera's model phase; ``offline`` until it delivered a frame (a camera that
        never produced one is not "scoring")."""
        return self.scoring.phase(camera) if camera in self.summary.frames else "offline"

    def handle_detected(self, detected: Sequence[DetectedFrame]) -> list[ScoredFrame]:
        """Score detected frames and route their alerts and views."""
        fps = {d.frame.camera: self._fps(d.frame) for d in detected}
        return self.handle_poses(
            [d.poses for d in detected],
            [d.frame.image for d in detected],
            [d.frame.read_at for d in detected],
            fps,
        )

    def handle_poses(
        self,
        frames: Sequence[PoseFrame],
        images: Sequence[np.ndarray | None] | None = None,
        read_at: Sequence[float] | None = None,
        fps: dict[str, float] | None = None,
    ) -> list[ScoredFrame]:
        """The score half of the loop: score tracked frames (score stage), record metrics,
        route alerts and frame views (when the sinks are up). Returns the scored frames."""
        scored = self.scoring.process(frames, fps)
        self._observe_scores(scored)
        for i, s in enumerate(scored):
            pf = s.poses
            self.summary.frames[pf.camera] = self.summary.frames.get(pf.camera, 0) + 1
            self.summary.persons += len(pf.persons)
            if self.router is None:
                continue
            image = images[i] if images is not None else None
            view = FrameView(
                pf.camera,
                pf.frame_index,
                pf.timestamp,
                pf.image_size,
                pf.persons,
                image,
                s.scores,
                s.threshold,
                s.alerting,
                read_at[i] if read_at is not None else None,
                (fps or {}).get(pf.camera),
                pf.fps,
            )
            self.router.publish(s.alerts, view)
            self.router.frame(view)
        return scored

    def _observe_scores(self, scored: Sequence[ScoredFrame]) -> None:
        """Score metrics; latencies only for frames of batches that scored someone (as
        before: a camera still learning, or a frame between strides, costs nothing)."""
        if not any(s.scores for s in scored):
            return
        t = self.scoring.timing
        n = len(scored)
        lat = self.metrics.stage_latency
        for s in scored:
            cam = s.poses.camera
            self.metrics.windows_scored.labels(camera=cam).inc(len(s.scores))
            lat.labels(camera=cam, stage="forecast").observe(t.forecast_s / n)
            lat.labels(camera=cam, stage="score").observe(t.score_s / n)
            for p in s.scores:
                self.metrics.anomaly_score.labels(camera=cam).observe(p.smoothed)

    def _fps(self, frame: Frame) -> float:
        """The rate of ``frame``'s camera as its frames come (what its learner and video
        writer need; frames/s): the rate the frame states (``detect_fps`` where the source
        renumbers at it), else the source's guess (0 until known)."""
        if frame.fps > 0:
            return frame.fps
        src = self.sources.get(frame.camera)
        return src.stats().fps if src is not None else 0.0

    # -- shutdown -------------------------------------------------------------------------
    def stop_steps(self) -> Sequence[Callable[[], None]]:
        return (
            self.close_episodes,
            self.stop_cameras,
            self.close_sinks,
            self.stop_ui,
            self.stop_broker,
        )

    def close_episodes(self) -> None:
        self.provider.close()  # cold-start training stops (not a failure)
        alerts = self.scoring.close(time.time())
        if self.router is not None:
            self.router.publish(alerts)
        for n in self.cameras:
            self.summary.phases[n] = self.phase(n)

    def stop_cameras(self) -> None:
        for src in self.sources.values():
            src.stop()
        for n, src in self.sources.items():
            st = src.stats()
            self.metrics.set_camera_status(n, st.status.value)
            self.summary.dropped[n] = st.frames_dropped
            self.summary.skipped[n] = st.frames_skipped
            if src.error:
                self.summary.camera_errors.setdefault(n, src.error)

    def close_sinks(self) -> None:
        if self.router is None:
            return
        self.summary.delivered = self.router.close(timeout=15.0)
        self.summary.alerts = dict(self.router.counts)
        self.summary.alert_latencies = self.router.latencies
        for sink in self.router.sinks:
            if isinstance(sink, AnnotatedVideoSink):
                self.summary.videos += sink.paths

    def stop_ui(self) -> None:
        if self.ui_server is not None:
            self.ui_server.stop()
            self.ui_server = None

    def stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()


__all__ = ["RunSummary", "RuntimeConfigError", "Service"]
