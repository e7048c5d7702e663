"""Alert sinks behind one interface (:class:`~pipelines.sinks.base.AlertSink`), fanned out
by :class:`~pipelines.sinks.router.AlertRouter`.

Adding a sink: one module here with an :class:`AlertSink` subclass, one config field (the
``outputs`` section, or a section of its own) and one line in :func:`build_sinks`.
"""

from __future__ import annotations

from pipelines.config import PosewatchConfig
from pipelines.sinks.base import AlertSink, FrameView
from pipelines.sinks.jsonl import JsonlSink
from pipelines.sinks.privacy import redact
from pipelines.sinks.router import AlertRouter
from pipelines.sinks.scores import ScoresJsonlSink
from pipelines.sinks.snapshots import SnapshotSink
from pipelines.sinks.store import SnapshotStamp, StoreSink
from pipelines.sinks.video import AnnotatedVideoSink


def build_sinks(cfg: PosewatchConfig, kafka: AlertSink | None = None) -> list[AlertSink]:
    """Every sink the configuration asks for (``kafka`` first: it is the one that
    acknowledges delivery; before it only the stamp of the snapshot reference). In privacy
    mode every sink but Kafka sees frames without their image."""
    o = cfg.outputs
    sinks: list[AlertSink] = []
    if o.store is not None:
        sinks.append(StoreSink(o.store, privacy=o.privacy != "off"))
    if o.alerts_jsonl is not None:
        sinks.append(JsonlSink(o.alerts_jsonl))
    if o.snapshots is not None:
        sinks.append(SnapshotSink(o.snapshots))
    if o.annotated_video is not None:
        sinks.append(AnnotatedVideoSink(o.annotated_video))
    if o.scores_jsonl is not None:
        sinks.append(ScoresJsonlSink(o.scores_jsonl))
    stamp = [SnapshotStamp()] if o.store is not None or o.snapshots is not None else []
    return [*stamp, *([kafka] if kafka is not None else []), *redact(sinks, o.privacy)]


__all__ = ["AlertRouter", "AlertSink", "FrameView", "build_sinks"]
