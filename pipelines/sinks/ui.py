"""The web view's live feed (``ui``): every scored frame and alert of the service handed to
the :class:`~pipelines.web.live.LiveHub` the page reads.

:meth:`UiSink.frame` only keeps a reference to the frame (drawing and JPEG encoding happen
on the web server's threads, and only while someone watches); :meth:`UiSink.tick` copies
each camera's status and model phase from the service at most twice a second. Without a
frame (``posewatch ui`` reads alerts from the topic) the camera's tile shows the alert's
skeleton on an empty canvas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from pipelines.alerts import Alert
from pipelines.sinks.base import AlertSink, FrameView
from pipelines.sinks.store import alert_person
from pipelines.web.live import LiveHub


class UiSink(AlertSink):
    """Feeds ``hub``; ``states`` (when given) returns camera -> (status, phase)."""

    name = "ui"

    def __init__(
        self, hub: LiveHub, states: Callable[[], dict[str, tuple[str, str]]] | None = None
    ):
        self.hub = hub
        self.states = states
        self._polled = 0.0

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        if view is None and alert.type != "update":  # split mode: the alert is the picture
            x2, y2 = alert.bbox[2], alert.bbox[3]
            size = (max(64, int(np.ceil(x2)) + 16), max(64, int(np.ceil(y2)) + 16))
            alerting = {alert.track_id} if alert.type == "new" else set()
            self.hub.frame(
                FrameView(alert.camera, alert.frame_index, alert.last_ts, size,
                          [alert_person(alert)], None, (), alert.threshold, alerting)
            )  # fmt: skip
        self.hub.alert(alert)

    def frame(self, view: FrameView) -> None:
        self.hub.frame(view)

    def tick(self) -> None:
        if self.states is None or time.monotonic() - self._polled < 0.5:
            return
        self._polled = time.monotonic()
        self.hub.set_states(self.states())


__all__ = ["UiSink"]
