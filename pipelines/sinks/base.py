"""The sink interface: where alerts (and, for visual sinks, annotated frames) go.

A sink is one module with one class: :meth:`AlertSink.publish` takes an alert (and, when the
alert came from a live frame, a :class:`FrameView` of it), :meth:`AlertSink.flush` waits
until everything published is durable or delivered, :meth:`AlertSink.close` releases it.
Sinks that draw every frame (annotated video, per-person scores) also implement
:meth:`AlertSink.frame`. The :class:`~pipelines.sinks.router.AlertRouter` fans out to them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.pose import Person
from pipelines.alerts import Alert
from pipelines.annotate import blank_canvas
from pipelines.track_scoring import PersonScore


@dataclass(slots=True)
class FrameView:
    """One scored camera frame as sinks see it.

    Attributes:
        camera: camera name.
        frame_index: frame index in the camera's stream.
        timestamp: frame time, seconds.
        image_size: ``(width, height)`` pixels.
        persons: tracked persons (pixels).
        image: ``(H, W, 3)`` uint8 BGR, or None where no image exists (``posewatch score``
            receives poses only: visual sinks draw on a blank canvas of ``image_size``).
        scores: persons scored at this frame.
        threshold: the camera's alert threshold (None while it has no model).
        alerting: track ids with an open episode.
        read_at: ``time.monotonic()`` when the frame was decoded (None without a camera).
        fps: the rate the camera's frames come at, as measured at its source (its
            ``detect_fps`` when lower; None when unknown).
        stated_fps: the rate the frame states for its camera
            (:attr:`~detector.pose.PoseFrame.fps`), by which scoring placed it on the
            model's time axis (None: it states none, and its indices are the model's frames).
    """

    camera: str
    frame_index: int
    timestamp: float
    image_size: tuple[int, int]
    persons: Sequence[Person]
    image: np.ndarray | None = None
    scores: Sequence[PersonScore] = ()
    threshold: float | None = None
    alerting: set[int] = field(default_factory=set)
    read_at: float | None = None
    fps: float | None = None
    stated_fps: float | None = None

    def canvas(self) -> np.ndarray:
        """The frame's image, or a dark grey canvas of its size (split mode)."""
        if self.image is not None:
            return self.image
        w, h = self.image_size
        return blank_canvas(w, h)

    def smoothed(self) -> Mapping[int, float]:
        """Smoothed score per track id at this frame."""
        return {s.track_id: s.smoothed for s in self.scores}


class AlertSink:
    """Base class of every sink (no-op defaults).

    Attributes:
        name: the ``sink`` label of the router's metrics.
        required: an alert this sink failed to take counts as not delivered: the router's
            :meth:`~pipelines.sinks.router.AlertRouter.flush` then returns False (``score``
            does not commit its offsets, so the alert is replayed after a restart; ``run``
            reports it). Visual and diagnostic sinks are best-effort (counted only).
    """

    name = "sink"
    required = False

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        """Accept one alert. Raise on failure; the router counts it and goes on."""

    def frame(self, view: FrameView) -> None:
        """See one scored frame (visual and per-frame sinks)."""

    def tick(self) -> None:
        """Called about once per main-loop round (gauges of background work)."""

    def flush(self, timeout: float = 10.0) -> bool:
        """True once everything published is durable (or delivered); False after
        ``timeout`` seconds."""
        return True

    def close(self, timeout: float = 10.0) -> bool:
        """Flush and release; True when nothing published is left undelivered."""
        return self.flush(timeout)


__all__ = ["AlertSink", "FrameView"]
