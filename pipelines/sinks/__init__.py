"""Alert sinks behind one interface (:class:`~pipelines.sinks.base.AlertSink`), fanned out
by :class:`~pipelines.sinks.router.AlertRouter`.

Adding a sink: one module here with an :class:`AlertSink` subclass, one config field (the
``outputs`` section, or a section of its own) and one line in :func:`build_sinks`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from pipelines.config import PosewatchConfig
from pipelines.serving import RuntimeConfigError
from pipelines.sinks.base import AlertSink, FrameView
from pipelines.sinks.jsonl import JsonlSink
from pipelines.sinks.privacy import redact
from pipelines.sinks.router import AlertRouter
from pipelines.sinks.scores import ScoresJsonlSink
from pipelines.sinks.snapshots import SnapshotSink
from pipelines.sinks.store import SnapshotStamp, StoreSink
from pipelines.sinks.video import AnnotatedVideoSink

_Sink = TypeVar("_Sink", bound=AlertSink)


def _opened(
    setting: str, path: Path, make: Callable[[], _Sink], folder: bool = False, hint: str = ""
) -> _Sink:
    """``make()``, the sink of ``outputs.<setting>``; a path it cannot use (a folder for a
    file, a file for a folder, no such or no writable folder) raises one line naming the
    setting (``hint`` added).

    Raises:
        RuntimeConfigError: the path is unusable (the service exits 2 with the message).
    """
    name = f"outputs.{setting}"
    if folder and path.exists() and not path.is_dir():
        raise RuntimeConfigError(f"{name}: {path} is a file, not a folder; give a folder{hint}")
    try:
        return make()
    except OSError as exc:
        why = "it is a folder" if path.is_dir() else (exc.strerror or str(exc))
        raise RuntimeConfigError(
            f"{name}: cannot open {path} ({why}); give a file path in a writable folder{hint}"
        ) from exc
    except RuntimeConfigError as exc:  # the store's own message (it names the file)
        raise type(exc)(f"{'' if name in str(exc) else f'{name}: '}{exc}{hint}") from exc


def build_sinks(cfg: PosewatchConfig, kafka: AlertSink | None = None) -> list[AlertSink]:
    """Every sink the configuration asks for (``kafka`` first: it is the one that
    acknowledges delivery; before it only the stamp of the snapshot reference). In privacy
    mode every sink but Kafka sees frames without their image.

    Raises:
        RuntimeConfigError: an output path that cannot be used; the message names its
            setting (``outputs.alerts_jsonl: cannot open ...``); the sinks opened before it
            are closed.
    """
    o = cfg.outputs
    sinks: list[AlertSink] = []
    try:
        if (store := o.store) is not None:
            privacy = o.privacy != "off"
            beside = o.alerts_jsonl is not None and store == o.alerts_jsonl.parent / "alerts.db"
            hint = " (outputs.store defaults to alerts.db beside outputs.alerts_jsonl)"
            make_store = partial(StoreSink, store, privacy=privacy)
            sinks.append(_opened("store", store, make_store, hint=hint if beside else ""))
        if (jsonl := o.alerts_jsonl) is not None:
            sinks.append(_opened("alerts_jsonl", jsonl, partial(JsonlSink, jsonl)))
        if (pictures := o.snapshots) is not None:
            sinks.append(_opened("snapshots", pictures, partial(SnapshotSink, pictures), True))
        if (video := o.annotated_video) is not None:
            make_video = partial(AnnotatedVideoSink, video)
            sinks.append(_opened("annotated_video", video, make_video, True))
        if (scores := o.scores_jsonl) is not None:
            sinks.append(_opened("scores_jsonl", scores, partial(ScoresJsonlSink, scores)))
    except RuntimeConfigError:
        for sink in sinks:
            sink.close()
        raise
    stamp = [SnapshotStamp()] if o.store is not None or o.snapshots is not None else []
    return [*stamp, *([kafka] if kafka is not None else []), *redact(sinks, o.privacy)]


__all__ = ["AlertRouter", "AlertSink", "FrameView", "build_sinks"]
