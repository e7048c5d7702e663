"""``posewatch score``: a Kafka consumer group that scores the ``PoseFrame``s on
``posewatch.poses`` and publishes alerts (the scale-out half of ``posewatch run``).

Delivery is at-least-once and alert ids are reproducible, so subscribers deduplicate by id:

- **Commit after acknowledgement.** After each poll the alerts it caused are flushed (the
  spooled sink returns once the broker acknowledged them); only then are offsets committed.
- **Commit a replay point, not the position.** The committed offset of a partition is the
  first message of the oldest person track still alive on its cameras (or the position when
  none is). A member that takes the partition over (rebalance, a crashed member) replays from
  there and rebuilds exactly the track buffers, smoothing and alert episodes the previous
  owner had, so it scores every window and re-derives the same alert ids.
- **Deterministic scoring.** Each frame's persons are scored as one batch with a seed drawn
  from ``(camera, frame index)``: the same input gives the same scores in any member.
- **Rebalances.** Partitions kept across a rebalance continue from this member's position;
  cameras of lost partitions are dropped (their new owner replays them); gained ones warm up.
- **Bad messages** (not JSON, not a valid PoseFrame) are counted and forwarded to the
  dead-letter topic with the reason in a header; scoring goes on.
- **Lag** per partition is exported (``posewatch_consumer_lag``).

Episodes still open when a member stops are not ended: the next owner continues them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.pose import PoseFrame
from detector.posefiles import PoseFileError, decode_poseframe
from forecasting.checkpoint import load_checkpoint
from forecasting.scoring import ScorerConfig, resolve_scorer
from pipelines.alerts import Alert, AlertLifecycle, ModelInfo
from pipelines.config import PosewatchConfig
from pipelines.kafka_sink import KafkaAlertSink
from pipelines.metrics import Metrics
from pipelines.runtime import (
    RuntimeConfigError,
    Stoppable,
    bound_heap_growth,
    kafka_client_config,
    resolve_threshold,
)
from pipelines.track_scoring import TrackScorer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ScoreSummary:
    """What a score member did."""

    messages: int = 0
    invalid: int = 0
    windows: int = 0
    alerts: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    rebalances: int = 0
    seconds: float = 0.0


def frame_seed(camera: str, frame_index: int) -> int:
    """The sampling seed of one camera frame (identical in every member)."""
    return zlib.crc32(f"{camera}/{frame_index}".encode())


class ScoreService(Stoppable):
    """One member of the ``posewatch score`` consumer group.

    Arguments:
        cfg: configuration (``forecaster.checkpoint`` is required; ``kafka.bootstrap_servers``
            must name the cluster the detectors publish to).
        metrics: metrics registry (a new one by default).
        group_id: consumer group (default ``kafka.score_group``).
    """

    def __init__(
        self, cfg: PosewatchConfig, metrics: Metrics | None = None, group_id: str | None = None
    ):
        if cfg.forecaster.checkpoint is None:
            raise RuntimeConfigError(
                "posewatch score needs forecaster.checkpoint (cold start is available in "
                "`posewatch run` only: train with `posewatch train`, or learn with `run`)"
            )
        if not cfg.kafka.bootstrap_servers:
            raise RuntimeConfigError(
                "posewatch score needs kafka.bootstrap_servers: the cluster that "
                "`posewatch detect` publishes poses to"
            )
        self.cfg = cfg
        if cfg.forecaster.threads is not None:
            import torch

            torch.set_num_threads(cfg.forecaster.threads)
        self.metrics = metrics or Metrics()
        self.group_id = group_id or cfg.kafka.score_group
        self._stop = threading.Event()
        self.metrics_port: int | None = None
        ckpt = load_checkpoint(cfg.forecaster.checkpoint)
        self.threshold = resolve_threshold(cfg, ckpt)
        from pipelines.evaluation import sampler_by_name

        scorer = resolve_scorer(cfg.forecaster.scorer, ckpt.model)
        self._base_cfg = ScorerConfig(
            name=scorer,
            num_samples=cfg.forecaster.samples,
            sampler=sampler_by_name(ckpt, cfg.forecaster.sampler),
            batch=cfg.forecaster.batch,
        )
        self.scorer = TrackScorer(
            ckpt, self._base_cfg, cfg.forecaster.stride, cfg.forecaster.smoothing_sigma
        )
        self.model_info = ModelInfo(
            name=f"gru-nf/{cfg.forecaster.sampler}/{scorer}",
            version=str(ckpt.meta.get("code_version")),
        )
        self.lifecycles: dict[str, AlertLifecycle] = {}
        self.camera_tp: dict[str, Any] = {}  # camera -> TopicPartition
        self.track_start: dict[tuple[str, int], int] = {}  # (camera, track) -> first offset
        self.position: dict[Any, int] = {}  # TopicPartition -> next offset to process
        self.windows = 0
        self.consumed = 0  # messages taken from the poses topic (valid or not)
        self._scores_fh = None
        if cfg.outputs.scores_jsonl is not None:
            cfg.outputs.scores_jsonl.parent.mkdir(parents=True, exist_ok=True)
            self._scores_fh = open(cfg.outputs.scores_jsonl, "a", buffering=1)  # noqa: SIM115

    # -- state ---------------------------------------------------------------------------
    def _lifecycle(self, camera: str) -> AlertLifecycle:
        life = self.lifecycles.get(camera)
        if life is None:
            a = self.cfg.alerting
            life = self.lifecycles[camera] = AlertLifecycle(
                camera,
                self.threshold,
                a.min_duration_s,
                a.hysteresis,
                a.update_interval_s,
                a.cooldown_s,
                a.top_joints,
                self.model_info,
            )
        return life

    def drop_partition(self, tp: Any) -> None:
        """Forget every camera of a partition this member no longer owns."""
        for cam in [c for c, p in self.camera_tp.items() if p == tp]:
            self.scorer.drop_camera(cam)
            self.lifecycles.pop(cam, None)
            del self.camera_tp[cam]
            for key in [k for k in self.track_start if k[0] == cam]:
                del self.track_start[key]
        self.position.pop(tp, None)

    def replay_point(self, tp: Any) -> int:
        """Offset to commit for ``tp``: the oldest live track's first message, else the
        position."""
        cams = {c for c, p in self.camera_tp.items() if p == tp}
        starts = [o for (c, _), o in self.track_start.items() if c in cams]
        pos = self.position.get(tp, 0)
        return min([pos, *starts])

    def process(self, frame: PoseFrame, tp: Any, offset: int) -> list[Alert]:
        """Score one PoseFrame (message ``offset`` of ``tp``); returns the alerts it causes."""
        cam = frame.camera
        self.camera_tp[cam] = tp
        for p in frame.persons:
            self.track_start.setdefault((cam, p.track_id), offset)
        self.scorer.cfg = dataclasses.replace(
            self._base_cfg, seed=frame_seed(cam, frame.frame_index)
        )
        scores = self.scorer.add([frame])
        self.metrics.windows_scored.labels(camera=cam).inc(len(scores))
        self.windows += len(scores)
        if self._scores_fh is not None:
            for s in scores:
                self._scores_fh.write(
                    f'{{"camera":{json.dumps(cam)},"track_id":{s.track_id},'
                    f'"frame_index":{s.frame_index},"score":{s.score:.6g},'
                    f'"smoothed":{s.smoothed:.6g}}}\n'
                )
        life = self._lifecycle(cam)
        alerts: list[Alert] = []
        for s in scores:
            self.metrics.anomaly_score.labels(camera=cam).observe(s.smoothed)
            alerts += life.update(
                s.track_id,
                s.timestamp,
                s.frame_index,
                s.smoothed,
                s.bbox.tolist(),
                s.keypoints,
                s.joints,
            )
        for tid in self.scorer.forget_stale(cam, frame.frame_index):
            self.track_start.pop((cam, tid), None)
            alerts += life.lost(tid, frame.timestamp)
        return alerts

    # -- main loop -----------------------------------------------------------------------
    def run(self, max_seconds: float | None = None) -> ScoreSummary:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.consumer.subscription_state import ConsumerRebalanceListener
        from kafka.structs import OffsetAndMetadata

        cfg = self.cfg
        k = cfg.kafka
        bound_heap_growth()
        t0 = time.monotonic()
        summary = ScoreSummary()
        if cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, self.metrics_port)
        client = kafka_client_config(cfg)
        member = f"{socket.gethostname()}-{os.getpid()}"
        spool = Path(k.spool_dir) / f"score-{member}"
        sink = KafkaAlertSink(
            k.bootstrap_servers,
            k.topic,
            spool,
            client_id=f"{k.client_id}-score",
            spool_max_bytes=int(k.spool_max_mb * 2**20),
            producer_config=client,
            on_delivery=self.metrics.on_delivery,
        )
        dlq = KafkaProducer(bootstrap_servers=k.bootstrap_servers, acks="all", retries=5, **client)
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{k.client_id}-score-{member}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(k.session_timeout_s * 1000 / 4)),
            **client,
        )
        service = self

        def flush_and_commit() -> bool:
            if not sink.flush(timeout=k.ack_timeout_s):
                log.warning("alerts not acknowledged yet; offsets not committed")
                return False
            offsets = {
                tp: OffsetAndMetadata(service.replay_point(tp), "", -1) for tp in service.position
            }
            if offsets:
                consumer.commit(offsets)
                summary.commits += 1
            return True

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            # Runs on kafka-python's IO thread: nothing blocking here (no commit, no flush).
            # Offsets were committed after the last acknowledged poll; a new owner replays
            # from that replay point.
            def on_partitions_revoked(self, revoked: Any) -> None:
                summary.rebalances += 1

            def on_partitions_assigned(self, assigned: Any) -> None:
                keep = set(assigned)
                for tp in [tp for tp in service.position if tp not in keep]:
                    service.drop_partition(tp)
                for tp in assigned:
                    if tp in service.position:  # kept: continue where this member was
                        consumer.seek(tp, service.position[tp])
                log.info(
                    "partitions now %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
                )

        consumer.subscribe([k.poses_topic], listener=Listener())
        last_lag = 0.0
        try:
            while not self._stop.is_set():
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    break
                polled = consumer.poll(timeout_ms=500)
                alerts: list[Alert] = []
                for tp, records in polled.items():
                    for rec in records:
                        summary.messages += 1
                        self.consumed += 1
                        self.metrics.messages_consumed.labels(partition=str(tp.partition)).inc()
                        where = f"{tp.topic}[{tp.partition}]@{rec.offset}"
                        try:
                            frame = decode_poseframe(rec.value, where)
                        except PoseFileError as exc:
                            summary.invalid += 1
                            self.metrics.messages_invalid.labels(topic=tp.topic).inc()
                            log.warning("dead-lettered %s", exc)
                            dlq.send(
                                k.dead_letter_topic,
                                key=rec.key,
                                value=rec.value,
                                headers=[
                                    ("error", str(exc).encode()[:1000]),
                                    ("source", where.encode()),
                                ],
                            )
                            self.position[tp] = rec.offset + 1
                            continue
                        t_sc = time.perf_counter()
                        out = self.process(frame, tp, rec.offset)
                        self.metrics.stage_latency.labels(
                            camera=frame.camera, stage="score"
                        ).observe(time.perf_counter() - t_sc)
                        self.position[tp] = rec.offset + 1
                        alerts += out
                for a in alerts:
                    self.metrics.alerts.labels(camera=a.camera, type=a.type).inc()
                    summary.alerts[a.type] = summary.alerts.get(a.type, 0) + 1
                    sink.publish(a.camera, a.model_dump_json().encode())
                if polled:
                    dlq.flush(timeout=k.ack_timeout_s)
                    flush_and_commit()
                self.metrics.spool_messages.set(sink.pending())
                if time.monotonic() - last_lag > 2.0:
                    last_lag = time.monotonic()
                    self._export_lag(consumer)
        finally:
            try:
                flush_and_commit()
            except Exception as exc:
                log.warning("final commit failed: %s", exc)
            consumer.close()
            dlq.close(timeout=5)
            sink.close(timeout=15.0)
            if sink.pending() == 0:
                import shutil

                shutil.rmtree(spool, ignore_errors=True)
        summary.windows = self.windows
        summary.seconds = time.monotonic() - t0
        if self._scores_fh is not None:
            self._scores_fh.close()
        return summary

    def _export_lag(self, consumer: Any) -> None:
        try:
            tps = list(consumer.assignment())
            if not tps:
                return
            ends = consumer.end_offsets(tps)
            for tp in tps:
                pos = self.position.get(tp)
                if pos is None:
                    pos = consumer.position(tp)
                self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                    max(0, ends[tp] - pos)
                )
        except Exception as exc:  # metrics must not stop scoring
            log.debug("lag not exported: %s", exc)


__all__ = ["ScoreService", "ScoreSummary", "frame_seed"]
