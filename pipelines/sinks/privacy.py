"""Privacy mode (``outputs.privacy: skeletons_only``): no image of a person leaves the
process.

Pose-based detection needs no picture of anyone. In this mode every sink that could write
or serve pixels (snapshots, annotated video, the alert store, the web view) is wrapped in
:class:`Redacted`, which hands it each frame without its image: visual sinks then draw the
skeletons on an empty canvas of the frame's size, as they do in split mode.
"""

from __future__ import annotations

from dataclasses import replace

from pipelines.alerts import Alert
from pipelines.sinks.base import AlertSink, FrameView


class Redacted(AlertSink):
    """``sink``, seeing every frame without its image (same name, same ``required``)."""

    def __init__(self, sink: AlertSink):
        self.sink = sink
        self.name = sink.name
        self.required = sink.required

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        self.sink.publish(alert, _blind(view))

    def frame(self, view: FrameView) -> None:
        blind = _blind(view)
        assert blind is not None
        self.sink.frame(blind)

    def tick(self) -> None:
        self.sink.tick()

    def flush(self, timeout: float = 10.0) -> bool:
        return self.sink.flush(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        return self.sink.close(timeout)


def _blind(view: FrameView | None) -> FrameView | None:
    if view is None or view.image is None:
        return view
    return replace(view, image=None)


def redact(sinks: list[AlertSink], privacy: str) -> list[AlertSink]:
    """``sinks`` as privacy mode wants them (unchanged when ``privacy`` is ``off``)."""
    if privacy == "off":
        return sinks
    return [s if isinstance(s, Redacted) else Redacted(s) for s in sinks]


__all__ = ["Redacted", "redact"]
