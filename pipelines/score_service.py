"""``posewatch score``: a Kafka consumer group that scores the ``PoseFrame``s on
``posewatch.poses`` and publishes alerts (the scale-out half of ``posewatch run``):
Kafka -> score stage -> alert router, the same stage and router as ``posewatch run``.

Delivery is at-least-once and alert ids are reproducible, so subscribers deduplicate by id:

- **Commit after acknowledgement.** After each poll the alerts it caused are flushed (the
  spooled sink returns once the broker acknowledged them); only then are offsets committed.
- **Commit a replay point, not the position.** The committed offset of a partition is the
  first message of the oldest person track still alive on its cameras (or the position when
  none is). A member that takes the partition over (rebalance, a crashed member) replays from
  there and rebuilds exactly the track buffers, smoothing and alert episodes the previous
  owner had, so it scores every window and re-derives the same alert ids.
- **Deterministic scoring.** Each frame's persons are scored as one batch with a seed drawn
  from ``(camera, frame index)`` (``forecaster.seeding: frame``, the score stage's default):
  the same input gives the same scores in any member, and in ``posewatch run``.
- **Rebalances.** Partitions kept across a rebalance continue from this member's position;
  cameras of lost partitions are dropped (their new owner replays them); gained ones warm up.
- **Bad messages** (not JSON, not a valid PoseFrame, a camera beyond ``kafka.max_cameras``,
  or any error while scoring one) are counted and forwarded to the dead-letter topic with
  the reason in a header; scoring goes on: a member never dies on message content. Each
  dead letter names its source (``topic[partition]@offset``); a member reads the sources
  already on the dead-letter topic (its last 10,000 records) before its first dead letter,
  so replaying a partition from its replay point sends none twice.
- **Lag** per partition is exported (``posewatch_consumer_lag``).

Episodes still open when a member stops are not ended: the next owner continues them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.pose import PoseFrame
from detector.posefiles import PoseFileError, decode_poseframe
from pipelines.alerts import Alert
from pipelines.config import PosewatchConfig
from pipelines.kafka_util import kafka_client_config
from pipelines.metrics import Metrics
from pipelines.model_provider import CheckpointProvider
from pipelines.score_stage import ScoredFrame, ScoreStage, frame_seed, segments
from pipelines.service_base import RuntimeConfigError, ServiceBase
from pipelines.sinks import AlertRouter, FrameView, build_sinks
from pipelines.sinks.kafka import KafkaSink

log = logging.getLogger(__name__)

#: Largest dead-letter value (bytes): the record plus its headers stays under the
#: producer's default 1 MiB request size.
DLQ_MAX_VALUE = 1_000_000


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


class ScoreService(ServiceBase):
    """One member of the ``posewatch score`` consumer group.

    Arguments:
        cfg: configuration (``forecaster.checkpoint`` is required; ``kafka.bootstrap_servers``
            must name the cluster the detectors publish to).
        metrics: metrics registry (a new one by default).
        group_id: consumer group (default ``kafka.score_group``).

    Raises:
        RuntimeConfigError: no checkpoint or bootstrap servers, or a checkpoint that cannot
            be served as configured.
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
        super().__init__(cfg, metrics)
        if cfg.forecaster.threads is not None:
            import torch

            torch.set_num_threads(cfg.forecaster.threads)
        self.group_id = group_id or cfg.kafka.score_group
        self.provider = CheckpointProvider(cfg)
        self.threshold = self.provider.model.threshold
        self.scoring = ScoreStage(self.provider, cfg.alerting, cfg.forecaster.seeding)
        self.camera_tp: dict[str, Any] = {}  # camera -> TopicPartition
        self.track_start: dict[tuple[str, int], int] = {}  # (camera, track) -> first offset
        self.position: dict[Any, int] = {}  # TopicPartition -> next offset to process
        self.windows = 0
        self.consumed = 0  # messages taken from the poses topic (valid or not)
        self.summary = ScoreSummary()
        self._dlq_sources: set[str] = set()  # messages on the dead-letter topic
        self._dlq_futures: list[Any] = []  # dead letters sent since the last commit
        self.dlq_failed = 0  # dead letters not acknowledged (commits stop)
        self._dlq_loaded = False
        self.router: AlertRouter | None = None
        self.consumer: Any = None
        self.dlq: Any = None
        self._t0 = time.monotonic()

    # -- state ---------------------------------------------------------------------------
    def drop_partition(self, tp: Any) -> None:
        """Forget every camera of a partition this member no longer owns."""
        for cam in [c for c, p in self.camera_tp.items() if p == tp]:
            self.scoring.drop_camera(cam)
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

    def score_frame(self, frame: PoseFrame, tp: Any, offset: int) -> ScoredFrame:
        """Score one PoseFrame (message ``offset`` of ``tp``) through the score stage."""
        (scored,) = self.score_frames([(frame, tp, offset)])
        return scored

    def score_frames(self, items: Sequence[tuple[PoseFrame, Any, int]]) -> list[ScoredFrame]:
        """Score PoseFrames (each with its partition and offset) in one score-stage call:
        the model sees every person due in them at once; each frame keeps its own seed
        (``frame`` seeding), so the scores are those of one message at a time."""
        for frame, tp, offset in items:
            self.camera_tp[frame.camera] = tp
            for p in frame.persons:
                self.track_start.setdefault((frame.camera, p.track_id), offset)
        t0 = time.perf_counter()
        scored = self.scoring.process([f for f, _, _ in items])
        share = (time.perf_counter() - t0) / len(items)
        for done in scored:
            cam = done.poses.camera
            self.metrics.stage_latency.labels(camera=cam, stage="score").observe(share)
            self.metrics.windows_scored.labels(camera=cam).inc(len(done.scores))
            self.windows += len(done.scores)
            for s in done.scores:
                self.metrics.anomaly_score.labels(camera=cam).observe(s.smoothed)
            for tid in done.lost:
                self.track_start.pop((cam, tid), None)
        return scored

    def route(self, scored: ScoredFrame) -> list[Alert]:
        """Send a scored frame's alerts and view to the sinks; returns its alerts."""
        if self.router is not None:
            pf = scored.poses
            view = FrameView(
                pf.camera,
                pf.frame_index,
                pf.timestamp,
                pf.image_size,
                pf.persons,
                None,
                scored.scores,
                scored.threshold,
                scored.alerting,
                stated_fps=pf.fps,
            )
            self.router.publish(scored.alerts, view)
            self.router.frame(view)
        return scored.alerts

    def process(self, frame: PoseFrame, tp: Any, offset: int) -> list[Alert]:
        """Score one PoseFrame and route what it causes; returns its alerts."""
        return self.route(self.score_frame(frame, tp, offset))

    # -- start-up -------------------------------------------------------------------------
    def start_steps(self) -> Sequence[Callable[[], None]]:
        return (self.init_process, self.init_metrics, self.init_sinks, self.init_consumer)

    def init_sinks(self) -> None:
        k = self.cfg.kafka
        member = f"{socket.gethostname()}-{os.getpid()}"
        kafka = KafkaSink(
            k.bootstrap_servers,
            k.topic,
            Path(k.spool_dir) / f"score-{member}",
            self.metrics,
            remove_empty_spool=True,
            client_id=f"{k.client_id}-score",
            spool_max_bytes=int(k.spool_max_mb * 2**20),
            producer_config=kafka_client_config(self.cfg),
        )
        self.router = AlertRouter(build_sinks(self.cfg, kafka), self.metrics)

    def init_consumer(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        k = self.cfg.kafka
        client = kafka_client_config(self.cfg)
        member = f"{socket.gethostname()}-{os.getpid()}"
        self.dlq = KafkaProducer(
            bootstrap_servers=k.bootstrap_servers,
            acks="all",
            retries=5,
            max_block_ms=10_000,
            bootstrap_timeout_ms=10_000,
            max_request_size=1_048_576 + 16_384,
            **client,
        )
        self.consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{k.client_id}-score-{member}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=k.max_poll_records,
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=max(100, int(k.session_timeout_s * 1000 / 4)),
            bootstrap_timeout_ms=10_000,
            **client,
        )
        self.consumer.subscribe([k.poses_topic], listener=_rebalance_listener(self))

    # -- main loop -----------------------------------------------------------------------
    def run(self, max_seconds: float | None = None) -> ScoreSummary:
        """Consume, score and publish until stopped or ``max_seconds`` passed."""
        self._t0 = time.monotonic()
        last_lag = 0.0
        try:
            self.start()
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - self._t0 > max_seconds:
                    break
                polled = self.consumer.poll(timeout_ms=500)
                self.handle_records([(tp, rec) for tp, recs in polled.items() for rec in recs])
                if polled:
                    self.flush_and_commit()
                assert self.router is not None
                self.router.tick()
                if time.monotonic() - last_lag > 2.0:
                    last_lag = time.monotonic()
                    self._export_lag()
        finally:
            self.shutdown()
        self.summary.windows = self.windows
        self.summary.seconds = time.monotonic() - self._t0
        return self.summary

    def handle_records(self, records: Sequence[tuple[Any, Any]]) -> None:
        """The pose messages of one poll: each decoded and admitted (a bad one goes to the
        dead-letter topic), the valid ones scored in one call and routed in order. If that
        call fails, they are scored one message at a time, so only the message that fails
        on its own is dead-lettered."""
        valid: list[tuple[Any, Any, PoseFrame]] = []
        for tp, rec in records:
            frame = self.decode_record(tp, rec)
            if frame is not None:
                valid.append((tp, rec, frame))
        # One call per run without a step back (as the stage would split it), each routed
        # before the next: a failed call leaves the stage as before it.
        for sl in segments([f for _, _, f in valid]):
            part = valid[sl]
            try:
                scored = self.score_frames([(f, tp, rec.offset) for tp, rec, f in part])
            except Exception as exc:
                log.warning(
                    "scoring %d messages in one call failed (%r); scoring them one at a time",
                    len(part),
                    exc,
                )
                for tp, rec, frame in part:
                    self.handle_record(tp, rec, frame)
                continue
            for done in scored:
                self.route(done)

    def decode_record(self, tp: Any, rec: Any) -> PoseFrame | None:
        """Count, decode and admit one pose message; None (dead-lettered) when invalid."""
        self.summary.messages += 1
        self.consumed += 1
        self.metrics.messages_consumed.labels(partition=str(tp.partition)).inc()
        where = f"{tp.topic}[{tp.partition}]@{rec.offset}"
        self.position[tp] = rec.offset + 1
        try:
            frame = decode_poseframe(rec.value, where)
            self.admit(frame.camera, tp)
            self.camera_tp[frame.camera] = tp  # admitted: counts toward kafka.max_cameras
        except PoseFileError as exc:
            self.dead_letter(tp, rec, where, exc)
            return None
        except Exception as exc:  # a poison message must not kill the member
            log.exception("decoding %s failed", where)
            self.dead_letter(tp, rec, where, RuntimeError(f"{where}: decoding failed: {exc!r}"))
            return None
        return frame

    def handle_record(self, tp: Any, rec: Any, frame: PoseFrame | None = None) -> None:
        """One pose message: decode and admit it (unless ``frame`` is given: done), score
        and route; a message that fails any step goes to the dead-letter topic with the
        reason (never fatal)."""
        if frame is None:
            frame = self.decode_record(tp, rec)
            if frame is None:
                return
        where = f"{tp.topic}[{tp.partition}]@{rec.offset}"
        try:
            self.process(frame, tp, rec.offset)
        except Exception as exc:  # a poison message must not kill the member
            log.exception("scoring %s failed", where)
            # tracks it started must not hold the replay point back
            for p in frame.persons:
                if self.track_start.get((frame.camera, p.track_id)) == rec.offset:
                    del self.track_start[(frame.camera, p.track_id)]
            self.dead_letter(tp, rec, where, RuntimeError(f"{where}: scoring failed: {exc!r}"))

    def admit(self, camera: str, tp: Any) -> None:
        """Refuse a camera beyond ``kafka.max_cameras`` (each is a metric label series).

        Raises:
            PoseFileError: the bound is reached.
        """
        if camera in self.camera_tp or len(self.camera_tp) < self.cfg.kafka.max_cameras:
            return
        raise PoseFileError(
            tp.topic,
            f"camera {camera!r} refused: this member already scores "
            f"{len(self.camera_tp)} cameras (kafka.max_cameras)",
        )

    def dead_letter(self, tp: Any, rec: Any, where: str, exc: Exception) -> None:
        self.summary.invalid += 1
        self.metrics.messages_invalid.labels(topic=tp.topic).inc()
        if where in self._dead_letters():
            log.info("%s was dead-lettered before (replay); not sent again", where)
            return
        self._dlq_sources.add(where)
        log.warning("dead-lettered %s", exc)
        value = rec.value if isinstance(rec.value, bytes | bytearray) else b""
        headers = [("error", str(exc).encode()[:1000]), ("source", where.encode())]
        if len(value) > DLQ_MAX_VALUE:  # leave room for the headers under the size limit
            headers.append(
                ("truncated", f"{len(value)} bytes, first {DLQ_MAX_VALUE} kept".encode())
            )
            value = value[:DLQ_MAX_VALUE]
        try:
            fut = self.dlq.send(
                self.cfg.kafka.dead_letter_topic, key=rec.key, value=value, headers=headers
            )
        except Exception as err:  # the DLQ must not kill the member either
            self.dlq_failed += 1
            log.error("%s: cannot be dead-lettered (%s); offsets not committed", where, err)
            return
        self._dlq_futures.append(fut)

    def _dlq_delivered(self) -> bool:
        """Flush the dead-letter producer; True when every dead letter since the last call
        was acknowledged (a commit may then move past them)."""
        if self.dlq is None:
            return True
        futures, self._dlq_futures = self._dlq_futures, []
        if futures:
            self.dlq.flush(timeout=self.cfg.kafka.ack_timeout_s)
        failed = sum(1 for f in futures if not (f.is_done and f.succeeded()))
        self.dlq_failed += failed
        if self.dlq_failed:
            log.error(
                "%d dead letters not acknowledged; offsets not committed (they are replayed "
                "at the next start)",
                self.dlq_failed,
            )
            return False
        return True

    def flush_and_commit(self) -> bool:
        """Commit replay points once every sink has the alerts so far."""
        from kafka.structs import OffsetAndMetadata

        assert self.router is not None
        if not self._dlq_delivered():
            return False
        if not self.router.flush(timeout=self.cfg.kafka.ack_timeout_s):
            log.warning("alerts not acknowledged yet; offsets not committed")
            return False
        offsets = {tp: OffsetAndMetadata(self.replay_point(tp), "", -1) for tp in self.position}
        if offsets:
            self.consumer.commit(offsets)
            self.summary.commits += 1
        return True

    def _dead_letters(self, tail: int = 10_000) -> set[str]:
        """Sources (``topic[partition]@offset``) already on the dead-letter topic, read once
        (its last ``tail`` records per partition)."""
        if self._dlq_loaded:
            return self._dlq_sources
        self._dlq_loaded = True
        from kafka import KafkaConsumer, TopicPartition

        k = self.cfg.kafka
        try:
            c = KafkaConsumer(
                bootstrap_servers=k.bootstrap_servers,
                enable_auto_commit=False,
                **kafka_client_config(self.cfg),
            )
            try:
                parts = c.partitions_for_topic(k.dead_letter_topic) or set()
                tps = [TopicPartition(k.dead_letter_topic, p) for p in parts]
                if tps:
                    c.assign(tps)
                    ends = c.end_offsets(tps)
                    for tp in tps:
                        c.seek(tp, max(0, ends[tp] - tail))
                    # Read up to the end offsets taken above, however slow the broker is
                    # (a timeout between two fetches is not the end), within one deadline.
                    deadline = time.monotonic() + max(10.0, k.ack_timeout_s)
                    while any(c.position(tp) < ends[tp] for tp in tps):
                        if time.monotonic() > deadline:
                            raise TimeoutError("read timed out before its end offsets")
                        for records in c.poll(timeout_ms=500).values():
                            for rec in records:
                                src = dict(rec.headers or []).get("source")
                                if src:
                                    self._dlq_sources.add(src.decode(errors="replace"))
            finally:
                c.close()
        except Exception as exc:  # the DLQ unreadable: duplicates are possible, not loss
            log.warning("cannot read the dead-letter topic %s: %s", k.dead_letter_topic, exc)
        return self._dlq_sources

    def _export_lag(self) -> None:
        try:
            tps = list(self.consumer.assignment())
            if not tps:
                return
            ends = self.consumer.end_offsets(tps)
            for tp in tps:
                pos = self.position.get(tp)
                if pos is None:
                    pos = self.consumer.position(tp)
                self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                    max(0, ends[tp] - pos)
                )
        except Exception as exc:  # metrics must not stop scoring
            log.debug("lag not exported: %s", exc)

    # -- shutdown -------------------------------------------------------------------------
    def stop_steps(self) -> Sequence[Callable[[], None]]:
        # Episodes still open are not ended: the partition's next owner continues them.
        return (self.final_commit, self.close_consumer, self.close_sinks)

    def final_commit(self) -> None:
        if self.consumer is not None and self.router is not None:
            try:
                self.flush_and_commit()
            except Exception as exc:
                log.warning("final commit failed: %s", exc)

    def close_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.dlq is not None:
            self.dlq.close(timeout=5)

    def close_sinks(self) -> None:
        if self.router is not None:
            self.router.close(timeout=15.0)
            self.summary.alerts = dict(self.router.counts)


def _rebalance_listener(service: ScoreService) -> Any:
    """A kafka-python rebalance listener for ``service``."""
    from kafka.consumer.subscription_state import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        # Runs on kafka-python's IO thread: nothing blocking here (no commit, no flush).
        # Offsets were committed after the last acknowledged poll; a new owner replays from
        # that replay point.
        def on_partitions_revoked(self, revoked: Any) -> None:
            service.summary.rebalances += 1

        def on_partitions_assigned(self, assigned: Any) -> None:
            # Partitions taken over: what their earlier owner dead-lettered is read again
            # (lazily, on the main thread) before the next dead letter.
            service._dlq_loaded = False
            keep = set(assigned)
            for tp in [tp for tp in service.position if tp not in keep]:
                service.drop_partition(tp)
            for tp in assigned:
                if tp in service.position:  # kept: continue where this member was
                    service.consumer.seek(tp, service.position[tp])
            log.info("partitions now %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    return Listener()


__all__ = ["ScoreService", "ScoreSummary", "frame_seed"]
