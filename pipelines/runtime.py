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
from forecasting.checkpoint import Checkpoint, load_checkpoint
from forecasting.scoring import ScorerConfig, resolve_scorer
from pipelines.alerts import Alert, AlertLifecycle, ModelInfo
from pipelines.annotate import AnnotatedVideoWriter, draw_persons, snapshot_jpeg
from pipelines.broker import EmbeddedBroker
from pipelines.config import PosewatchConfig
from pipelines.jsonl_sink import JsonlAlertSink
from pipelines.kafka_sink import KafkaAlertSink
from pipelines.learning import LearnSettings, SceneLearner
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
    startup_s: float = 0.0  # start -> first frame detected (broker, model load, export)
    phases: dict[str, str] = field(default_factory=dict)  # camera -> model phase at the end


def kafka_client_config(cfg: PosewatchConfig) -> dict[str, Any]:
    """kafka-python security settings (SASL / SSL) from the configuration."""
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


def bound_heap_growth(threshold: int = 512 * 1024) -> bool:
    """Serve allocations above ``threshold`` bytes (frames, input tensors) with mmap, always.

    glibc raises its mmap threshold after the first large free, so 1-10 MB frames and tensors
    then come from the heap, which fragments: a 4-camera `posewatch detect` grew ~1.4 GB/min
    (measured), flat at 1.27 GB with a fixed threshold. Returns False where unavailable.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def resolve_threshold(cfg: PosewatchConfig, ckpt: Checkpoint) -> float:
    """The alert threshold: the configured one, else the checkpoint's calibration (which
    must have been fitted for the scorer in use: thresholds of scorers are not comparable)."""
    thr = cfg.alerting.threshold
    if thr is None:
        thr = ckpt.calibration.get("threshold")
        fitted = (ckpt.calibration.get("scorer") or {}).get("name")
        name = resolve_scorer(cfg.forecaster.scorer, ckpt.model)
        if thr is not None and fitted is not None and fitted != name:
            raise RuntimeConfigError(
                f"the checkpoint's threshold was calibrated for the {fitted} scorer, not "
                f"{name}: run `posewatch calibrate --scorer {name}`, set forecaster.scorer: "
                f"{fitted}, or set alerting.threshold"
            )
    if thr is None:
        raise RuntimeConfigError(
            "no alert threshold: set alerting.threshold or calibrate the checkpoint "
            "(`posewatch calibrate`)"
        )
    return float(thr)


class Stoppable:
    """A service whose main loop ends on :meth:`stop`, SIGTERM or SIGINT."""

    _stop: threading.Event

    def stop(self, *_: Any) -> None:
        """Ask the main loop to finish (signal-handler compatible)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)


class CameraMonitor:
    """Feeds each camera's source counters and status into the metrics; collects errors."""

    def __init__(self, sources: dict[str, CameraSource], metrics: Metrics):
        self.sources = sources
        self.metrics = metrics
        self._read = dict.fromkeys(sources, 0)
        self._dropped = dict.fromkeys(sources, 0)
        self.errors: dict[str, str] = {}

    def update(self) -> None:
        for n, src in self.sources.items():
            st = src.stats()
            self.metrics.set_camera_status(n, st.status.value)
            self.metrics.frames_read.labels(camera=n).inc(st.frames_read - self._read[n])
            self.metrics.frames_dropped.labels(camera=n).inc(st.frames_dropped - self._dropped[n])
            self._read[n], self._dropped[n] = st.frames_read, st.frames_dropped
            if src.error and n not in self.errors:
                self.errors[n] = src.error
                log.error("%s", src.error)


def open_sources(cfg: PosewatchConfig) -> dict[str, CameraSource]:
    """Start a reader thread for every enabled camera."""
    return {
        n: CameraSource(
            n,
            SourceConfig(
                uri=c.source,
                fps=c.fps,
                pace=c.pace,
                loop=c.loop,
                queue_size=max(c.queue_frames, cfg.detector.batch_size),
                no_frame_timeout=c.no_frame_timeout,
                retry_interval=c.retry_interval,
                max_backoff=c.max_backoff,
            ),
        ).start()
        for n, c in cfg.cameras.items()
        if c.enabled
    }


def pose_model(cfg: PosewatchConfig) -> PoseModel:
    """The configured pose model, warmed up (before cameras open: a paced camera would
    drop frames during the first inference's setup)."""
    pose = PoseModel(
        cfg.detector.weights,
        cfg.detector.imgsz,
        cfg.detector.backend,
        cfg.detector.device,
        cfg.detector.conf,
    )
    pose.warmup()
    return pose


class Service(Stoppable):
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

    def run(self, max_seconds: float | None = None, max_frames: int | None = None) -> RunSummary:
        """Run until stopped (signal, :meth:`stop`), every source finished, ``max_seconds``
        passed or ``max_frames`` frames (all cameras) were processed."""
        cfg = self.cfg
        bound_heap_growth()
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
            log.info(
                "embedded Kafka broker on %s (no kafka.bootstrap_servers configured); while "
                "this runs, read the alerts with: posewatch consume --bootstrap %s --topic %s",
                broker.bootstrap,
                broker.bootstrap,
                cfg.kafka.topic,
            )
        summary.bootstrap = ",".join(servers)
        sink = KafkaAlertSink(
            servers,
            cfg.kafka.topic,
            cfg.kafka.spool_dir,
            client_id=cfg.kafka.client_id,
            spool_max_bytes=int(cfg.kafka.spool_max_mb * 2**20),
            producer_config=kafka_client_config(cfg),
            on_delivery=self.metrics.on_delivery,
        )
        jsonl = JsonlAlertSink(cfg.outputs.alerts_jsonl) if cfg.outputs.alerts_jsonl else None
        summary.alerts_file = str(cfg.outputs.alerts_jsonl) if cfg.outputs.alerts_jsonl else None
        from pipelines.evaluation import sampler_by_name

        def scorer_for(ckpt: Checkpoint) -> TrackScorer:
            return TrackScorer(
                ckpt,
                ScorerConfig(
                    name=resolve_scorer(cfg.forecaster.scorer, ckpt.model),
                    num_samples=cfg.forecaster.samples,
                    sampler=sampler_by_name(ckpt, cfg.forecaster.sampler),
                    batch=cfg.forecaster.batch,
                ),
                cfg.forecaster.stride,
                cfg.forecaster.smoothing_sigma,
            )

        def model_info(ckpt: Checkpoint) -> ModelInfo:
            return ModelInfo(
                name=f"gru-nf/{cfg.forecaster.sampler}/"
                f"{resolve_scorer(cfg.forecaster.scorer, ckpt.model)}",
                version=str(ckpt.meta.get("code_version")),
            )

        shared: TrackScorer | None = None
        threshold: float | None = cfg.alerting.threshold
        info: ModelInfo | None = None
        if cfg.forecaster.checkpoint is not None:
            ckpt = load_checkpoint(cfg.forecaster.checkpoint)
            threshold = resolve_threshold(cfg, ckpt)
            shared = scorer_for(ckpt)
            shared.warmup()
            info = model_info(ckpt)
        pose = pose_model(cfg)
        cams = {n: c for n, c in cfg.cameras.items() if c.enabled}
        sources = open_sources(cfg)
        monitor = CameraMonitor(sources, self.metrics)
        trackers = {n: CameraTracker(n, cfg.detector.tracker) for n in cams}

        def lifecycle(camera: str, thr: float, mi: ModelInfo) -> AlertLifecycle:
            return AlertLifecycle(
                camera,
                float(thr),
                cfg.alerting.min_duration_s,
                cfg.alerting.hysteresis,
                cfg.alerting.update_interval_s,
                cfg.alerting.cooldown_s,
                cfg.alerting.top_joints,
                mi,
            )

        # Per camera: its scorer (shared by every camera when a checkpoint is configured,
        # one learned model per camera on a cold start), alert lifecycle and threshold.
        scorers: dict[str, TrackScorer | None] = dict.fromkeys(cams, shared)
        lifecycles: dict[str, AlertLifecycle] = {}
        thresholds: dict[str, float] = {}
        learners: dict[str, SceneLearner] = {}
        if shared is not None and threshold is not None and info is not None:
            for n in cams:
                lifecycles[n] = lifecycle(n, threshold, info)
                thresholds[n] = float(threshold)
        else:
            cs = cfg.cold_start
            settings = LearnSettings(
                seconds=cs.learn_minutes * 60,
                holdout=cs.holdout,
                epochs=cs.epochs,
                max_train_minutes=cs.max_train_minutes,
                hidden=cs.hidden,
                flow_layers=cs.flow_layers,
                save_dir=cs.save_dir,
                target_per_hour=cs.target_false_alerts_per_hour
                or cfg.alerting.target_false_alerts_per_hour,
                min_duration_s=cfg.alerting.min_duration_s,
                sigma=cfg.forecaster.smoothing_sigma,
                scorer=cfg.forecaster.scorer,
                samples=cfg.forecaster.samples,
                stride=cfg.forecaster.stride,
            )
            learners = {n: SceneLearner(n, settings) for n in cams}
            log.info(
                "no forecaster.checkpoint: each camera learns its scene from %.1f min of "
                "footage first (cold start)",
                cs.learn_minutes,
            )
        for n in cams:
            self.metrics.set_phase(n, learners[n].phase if n in learners else "scoring")

        def take_learned() -> None:
            for n, learner in learners.items():
                learned = learner.poll()
                if learned is not None:
                    scorers[n] = scorer_for(learned.checkpoint)
                    thr = float(threshold if threshold is not None else learned.threshold)
                    lifecycles[n] = lifecycle(n, thr, model_info(learned.checkpoint))
                    thresholds[n] = thr
                if n not in summary.phases or summary.phases[n] != learner.phase:
                    summary.phases[n] = learner.phase
                    self.metrics.set_phase(n, learner.phase)

        writers: dict[str, AnnotatedVideoWriter] = {}
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
                if max_frames is not None and sum(summary.frames.values()) >= max_frames:
                    break
                monitor.update()
                summary.camera_errors.update(monitor.errors)
                for n, learner in learners.items():
                    if sources[n].stats().status.value in ("finished", "offline"):
                        learner.input_ended()
                take_learned()
                batch = mux.next_batch(idle_timeout=0.5)
                if not batch:
                    if mux.done:
                        break
                    continue
                if not summary.startup_s:
                    summary.startup_s = time.monotonic() - t0
                t_det = time.perf_counter()
                dets = pose.predict([f.image for f in batch])
                det_s = (time.perf_counter() - t_det) / len(batch)
                pfs: list[PoseFrame] = []
                for f, d in zip(batch, dets, strict=True):
                    pf = trackers[f.camera].update(d, f.index, f.timestamp, f.image)
                    roi = cams[f.camera].roi
                    if roi is not None:
                        pf.persons = [p for p in pf.persons if inside_roi(p.bbox, roi)]
                    pfs.append(pf)
                    last_frame_read_at[(f.camera, f.index)] = f.read_at
                    self.metrics.stage_latency.labels(camera=f.camera, stage="decode").observe(
                        f.decode_s
                    )
                    self.metrics.stage_latency.labels(camera=f.camera, stage="detect").observe(
                        det_s
                    )
                    self.metrics.frames_processed.labels(camera=f.camera).inc()
                    self.metrics.persons_tracked.labels(camera=f.camera).set(len(pf.persons))
                    summary.frames[f.camera] = summary.frames.get(f.camera, 0) + 1
                    summary.persons += len(pf.persons)
                t_sc = time.perf_counter()
                groups: dict[int, tuple[TrackScorer, list[PoseFrame]]] = {}
                for f, pf in zip(batch, pfs, strict=True):
                    sc = scorers[f.camera]
                    if sc is None:
                        learners[f.camera].add(pf, sources[f.camera].stats().fps)
                    else:
                        groups.setdefault(id(sc), (sc, []))[1].append(pf)
                fc0 = sum(sc.forecast_s for sc, _ in groups.values())
                scores = [s for sc, group in groups.values() for s in sc.add(group)]
                if scores:
                    fc = sum(sc.forecast_s for sc, _ in groups.values()) - fc0
                    per = (time.perf_counter() - t_sc - fc) / len(batch)
                    for f in batch:
                        lat = self.metrics.stage_latency
                        lat.labels(camera=f.camera, stage="forecast").observe(fc / len(batch))
                        lat.labels(camera=f.camera, stage="score").observe(per)
                by_cam_frame: dict[tuple[str, int], list[Any]] = {}
                for s in scores:
                    self.metrics.anomaly_score.labels(camera=s.camera).observe(s.smoothed)
                    by_cam_frame.setdefault((s.camera, s.frame_index), []).append(s)
                for f, pf in zip(batch, pfs, strict=True):
                    persons = {p.track_id: p for p in pf.persons}
                    sc = scorers[f.camera]
                    life = lifecycles.get(f.camera)
                    for s in by_cam_frame.get((f.camera, f.index), []):
                        assert life is not None
                        emit(
                            life.update(
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
                    if sc is not None and life is not None:
                        for tid in sc.forget_stale(f.camera, f.index):
                            emit(life.lost(tid, f.timestamp))
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
                        alerting = {
                            tid for tid in persons if life is not None and life.is_open(tid)
                        }
                        thr_now = thresholds.get(f.camera, float("nan"))
                        w.write(draw_persons(f.image, pf.persons, cur, thr_now, alerting))
                    last_frame_read_at.pop((f.camera, f.index - 600), None)
                self.metrics.spool_messages.set(sink.pending())
                self.metrics.spool_bytes.set(sink.spool.size_bytes())
                self.metrics.spool_dropped.set(sink.spool.dropped)
        finally:
            now = time.time()
            for life in lifecycles.values():
                emit(life.close_all(now))
            for n in cams:
                summary.phases[n] = learners[n].phase if n in learners else "scoring"
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


def inside_roi(bbox: np.ndarray, roi: tuple[int, int, int, int]) -> bool:
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return bool(roi[0] <= cx <= roi[2] and roi[1] <= cy <= roi[3])


__all__ = ["RunSummary", "RuntimeConfigError", "Service", "ensure_topic"]
