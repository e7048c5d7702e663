"""``posewatch run``: cameras -> batched detection -> tracking -> live scoring -> alerts -> sinks.

One process, a reader thread per camera (bounded queues; live cameras drop their oldest
frames and count them), one main loop that batches frames of every camera through
YOLO-pose, tracks per camera, scores persons in batches (:class:`TrackScorer`), runs each
camera's :class:`AlertLifecycle`, and writes alerts to the JSONL file and the spooled Kafka
sink (the embedded broker when none is configured). SIGTERM / SIGINT end the loop: open
episodes get their ``end`` alerts, the producer is flushed, the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.muxer import FrameMuxer
from detector.pose import PoseFrame
from detector.pose_model import PoseModel
from detector.sources import CameraSource, SourceConfig
from detector.tracking import CameraTracker
from forecasting.scoring import ScorerConfig
from forecasting.train import load_checkpoint
from pipelines.alerts import Alert, AlertLifecycle, ModelInfo
from pipelines.annotate import AnnotatedVideoWriter, draw_persons, snapshot_jpeg
from pipelines.broker import EmbeddedBroker
from pipelines.config import PosewatchConfig
from pipelines.jsonl_sink import JsonlAlertSink
from pipelines.kafka_sink import KafkaAlertSink
from pipelines.metrics import Metrics
from pipelines.track_scoring import TrackScorer

log = logging.getLogger(__name__)


class RuntimeConfigError(ValueError):
    """The configuration cannot run (message says what to change)."""


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
    dropped: dict[str, int] = field(default_factory=dict)


def _producer_config(cfg: PosewatchConfig) -> dict[str, Any]:
    k = cfg.kafka
    out: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        out["sasl_mechanism"] = k.sasl_mechanism
        out["sasl_plain_username"] = k.sasl_username
        out["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        v = getattr(k, name)
        if v is not None:
            out[name] = str(v)
    return out


def ensure_topic(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 20.0) -> None:
    """Create ``topic`` if it does not exist (retrying while the broker starts)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
            try:
                if topic not in admin.list_topics():
                    admin.create_topics([NewTopic(topic, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
            finally:
                admin.close()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


class Service:
    """The single-process service.

    Arguments:
        cfg: validated configuration.
        metrics: metrics registry (a new one by default).
    """

    def __init__(self, cfg: PosewatchConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self.metrics_port: int | None = None
        if cfg.forecaster.checkpoint is None:
            raise RuntimeConfigError(
                "forecaster.checkpoint is not set: train a model with `posewatch train` "
                "(learning a scene from scratch, cold start, is not available yet)"
            )

    def stop(self, *_: Any) -> None:
        """Ask the main loop to finish (signal-handler compatible)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, max_seconds: float | None = None) -> RunSummary:
        cfg = self.cfg
        t0 = time.monotonic()
        summary = RunSummary(topic=cfg.kafka.topic)
        if cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_port)
        broker: EmbeddedBroker | None = None
        servers = list(cfg.kafka.bootstrap_servers)
        if not servers:
            broker = EmbeddedBroker().start()
            servers = [broker.bootstrap]
            ensure_topic(broker.bootstrap, cfg.kafka.topic)
        summary.bootstrap = ",".join(servers)
        sink = KafkaAlertSink(
            servers,
            cfg.kafka.topic,
            cfg.kafka.spool_dir,
            client_id=cfg.kafka.client_id,
            spool_max_bytes=int(cfg.kafka.spool_max_mb * 2**20),
            producer_config=_producer_config(cfg),
            on_delivery=self.metrics.on_delivery,
        )
        jsonl = JsonlAlertSink(cfg.outputs.alerts_jsonl) if cfg.outputs.alerts_jsonl else None
        summary.alerts_file = str(cfg.outputs.alerts_jsonl) if cfg.outputs.alerts_jsonl else None
        assert cfg.forecaster.checkpoint is not None
        ckpt = load_checkpoint(cfg.forecaster.checkpoint)
        threshold = cfg.alerting.threshold
        if threshold is None:
            threshold = ckpt.calibration.get("threshold")
        if threshold is None:
            raise RuntimeConfigError(
                "no alert threshold: set alerting.threshold or calibrate the checkpoint "
                "(`posewatch calibrate`)"
            )
        from pipelines.evaluation import sampler_by_name

        scorer_cfg = ScorerConfig(
            name=cfg.forecaster.scorer,
            num_samples=cfg.forecaster.samples,
            sampler=sampler_by_name(ckpt, cfg.forecaster.sampler),
            batch=cfg.forecaster.batch,
        )
        scorer = TrackScorer(
            ckpt, scorer_cfg, cfg.forecaster.stride, cfg.forecaster.smoothing_sigma
        )
        model_info = ModelInfo(
            name=f"gru-nf/{scorer_cfg.sampler.name}/{scorer_cfg.name}",
            version=str(ckpt.meta.get("code_version")),
        )
        pose = PoseModel(
            cfg.detector.weights,
            cfg.detector.imgsz,
            cfg.detector.backend,
            cfg.detector.device,
            cfg.detector.conf,
        )
        cams = {n: c for n, c in cfg.cameras.items() if c.enabled}
        sources = {
            n: CameraSource(
                n,
                SourceConfig(
                    uri=c.source,
                    fps=c.fps,
                    pace=c.pace,
                    loop=c.loop,
                    queue_size=max(4, cfg.detector.batch_size),
                    no_frame_timeout=c.no_frame_timeout,
                    retry_interval=c.retry_interval,
                    max_backoff=c.max_backoff,
                ),
            ).start()
            for n, c in cams.items()
        }
        trackers = {n: CameraTracker(n, cfg.detector.tracker) for n in cams}
        lifecycles = {
            n: AlertLifecycle(
                n,
                float(threshold),
                cfg.alerting.min_duration_s,
                cfg.alerting.hysteresis,
                cfg.alerting.update_interval_s,
                cfg.alerting.cooldown_s,
                cfg.alerting.top_joints,
                model_info,
            )
            for n in cams
        }
        writers: dict[str, AnnotatedVideoWriter] = {}
        last_read = dict.fromkeys(cams, 0)
        last_drop = dict.fromkeys(cams, 0)
        last_frame_read_at: dict[tuple[str, int], float] = {}
        mux = FrameMuxer(
            list(sources.values()), cfg.detector.batch_size, cfg.detector.batch_timeout_ms / 1000
        )

        def emit(
            alerts: list[Alert],
            image: np.ndarray | None = None,
            persons: dict[int, Any] | None = None,
        ) -> None:
            for a in alerts:
                self.metrics.alerts.labels(camera=a.camera, type=a.type).inc()
                summary.alerts[a.type] = summary.alerts.get(a.type, 0) + 1
                if jsonl is not None:
                    jsonl.write(a)
                t_pub = time.perf_counter()
                sink.publish(a.camera, a.model_dump_json().encode())
                self.metrics.stage_latency.labels(camera=a.camera, stage="publish").observe(
                    time.perf_counter() - t_pub
                )
                # Frame-to-alert for alerts a frame triggered; an `end` of a lost track
                # refers to its last sighting, which can be seconds old.
                read_at = (
                    last_frame_read_at.get((a.camera, a.frame_index)) if a.type != "end" else None
                )
                if read_at is not None:
                    lat = time.monotonic() - read_at
                    self.metrics.frame_to_alert.labels(camera=a.camera).observe(lat)
                    if len(summary.alert_latencies) < 100_000:
                        summary.alert_latencies.append(lat)
                if (
                    a.type == "new"
                    and cfg.outputs.snapshots is not None
                    and image is not None
                    and persons
                ):
                    p = persons.get(a.track_id)
                    if p is not None:
                        path = Path(cfg.outputs.snapshots) / f"{a.camera}-{a.alert_id}.jpg"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(snapshot_jpeg(image, p, a.score, a.threshold))

        try:
            while not self._stop.is_set():
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                for n, src in sources.items():
                    st = src.stats()
                    self.metrics.set_camera_status(n, st.status.value)
                    self.metrics.frames_read.labels(camera=n).inc(st.frames_read - last_read[n])
                    self.metrics.frames_dropped.labels(camera=n).inc(
                        st.frames_dropped - last_drop[n]
                    )
                    last_read[n], last_drop[n] = st.frames_read, st.frames_dropped
                    if src.error and n not in summary.camera_errors:
                        summary.camera_errors[n] = src.error
                        log.error("%s", src.error)
                batch = mux.next_batch(idle_timeout=0.5)
                if not batch:
                    if mux.done:
                        break
                    continue
                t_det = time.perf_counter()
                dets = pose.predict([f.image for f in batch])
                det_s = (time.perf_counter() - t_det) / len(batch)
                pfs: list[PoseFrame] = []
                for f, d in zip(batch, dets, strict=True):
                    pf = trackers[f.camera].update(d, f.index, f.timestamp, f.image)
                    roi = cams[f.camera].roi
                    if roi is not None:
                        pf.persons = [p for p in pf.persons if _inside(p.bbox, roi)]
                    pfs.append(pf)
                    last_frame_read_at[(f.camera, f.index)] = f.read_at
                    self.metrics.stage_latency.labels(camera=f.camera, stage="detect").observe(
                        det_s
                    )
                    self.metrics.frames_processed.labels(camera=f.camera).inc()
                    self.metrics.persons_tracked.labels(camera=f.camera).set(len(pf.persons))
                    summary.frames[f.camera] = summary.frames.get(f.camera, 0) + 1
                    summary.persons += len(pf.persons)
                t_sc = time.perf_counter()
                scores = scorer.add(pfs)
                if scores:
                    per = (time.perf_counter() - t_sc) / len(batch)
                    for f in batch:
                        self.metrics.stage_latency.labels(camera=f.camera, stage="score").observe(
                            per
                        )
                by_cam_frame: dict[tuple[str, int], list[Any]] = {}
                for s in scores:
                    self.metrics.anomaly_score.labels(camera=s.camera).observe(s.smoothed)
                    by_cam_frame.setdefault((s.camera, s.frame_index), []).append(s)
                for f, pf in zip(batch, pfs, strict=True):
                    persons = {p.track_id: p for p in pf.persons}
                    for s in by_cam_frame.get((f.camera, f.index), []):
                        emit(
                            lifecycles[f.camera].update(
                                s.track_id,
                                s.timestamp,
                                s.frame_index,
                                s.smoothed,
                                s.bbox,
                                s.keypoints,
                                s.joints,
                            ),
                            f.image,
                            persons,
                        )
                    for tid in scorer.forget_stale(f.camera, f.index):
                        emit(lifecycles[f.camera].lost(tid, f.timestamp))
                    if cfg.outputs.annotated_video is not None:
                        w = writers.get(f.camera)
                        if w is None:
                            fps = sources[f.camera].stats().fps or 10.0
                            w = writers[f.camera] = AnnotatedVideoWriter(
                                Path(cfg.outputs.annotated_video) / f"{f.camera}.mp4", fps
                            )
                        cur = {
                            s.track_id: s.smoothed
                            for s in by_cam_frame.get((f.camera, f.index), [])
                        }
                        alerting = {tid for tid in persons if lifecycles[f.camera].is_open(tid)}
                        w.write(draw_persons(f.image, pf.persons, cur, float(threshold), alerting))
                    last_frame_read_at.pop((f.camera, f.index - 600), None)
                self.metrics.spool_messages.set(sink.pending())
                self.metrics.spool_bytes.set(sink.spool.size_bytes())
                self.metrics.spool_dropped.set(sink.spool.dropped)
        finally:
            now = time.time()
            for life in lifecycles.values():
                emit(life.close_all(now))
            for src in sources.values():
                src.stop()
            for w in writers.values():
                w.close()
                summary.videos.append(str(w.path))
            summary.delivered = sink.close(timeout=15.0)
            if jsonl is not None:
                jsonl.close()
            self.metrics.spool_messages.set(sink.pending())
            for n, src in sources.items():
                self.metrics.set_camera_status(n, src.stats().status.value)
                summary.dropped[n] = src.stats().frames_dropped
                if src.error:
                    summary.camera_errors.setdefault(n, src.error)
            if broker is not None:
                broker.stop()
        summary.seconds = time.monotonic() - t0
        return summary


def _inside(bbox: np.ndarray, roi: tuple[int, int, int, int]) -> bool:
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return bool(roi[0] <= cx <= roi[2] and roi[1] <= cy <= roi[3])


__all__ = ["RunSummary", "RuntimeConfigError", "Service", "ensure_topic"]
