"""What the web view shows live: each camera's latest frame and state, and the alert stream.

The service's main loop hands every scored frame to :meth:`LiveHub.frame` (through
:class:`~pipelines.sinks.ui.UiSink`), which only keeps a reference to it and counts: no
drawing, no encoding. A frame is drawn and JPEG-encoded when a viewer asks for it
(:meth:`LiveHub.jpeg`, on the web server's threads), at most ``max_fps`` times a second per
camera however many viewers there are (they share the cached JPEG). Nobody watching costs
nothing but the reference.

Alerts reach the page's server-sent event streams through :meth:`LiveHub.alert`: each
subscriber has a bounded queue on the server's event loop (a slow page loses events, the
service never waits).

Example:
    >>> hub = LiveHub(["gate"], max_fps=4.0)
    >>> hub.jpeg("gate") is None  # no frame yet
    True
    >>> hub.states()[0]["status"]
    'starting'
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2

from pipelines.alerts import Alert
from pipelines.annotate import RED, blank_canvas, draw_persons
from pipelines.sinks.base import FrameView


@dataclass(slots=True)
class CameraState:
    """One camera as the cameras page shows it."""

    name: str
    status: str = "starting"  # starting | online | reconnecting | offline | finished
    phase: str = "offline"  # offline | learning | training | scoring | failed
    frames: int = 0
    persons: int = 0
    alerting: int = 0
    view: FrameView | None = None
    seq: int = 0  # frames seen
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    jpeg: bytes | None = None
    jpeg_seq: int = -1
    jpeg_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fps(self) -> float:
        a = self.arrivals
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        if time.monotonic() - a[-1] > 5.0:  # stalled
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])


class LiveHub:
    """Live state shared by the service (producer) and the web server (consumers).

    Arguments:
        cameras: camera names (tiles appear for others too, when they deliver).
        max_fps: most JPEGs encoded per second and camera.
        max_width: live images wider than this are scaled down.
        privacy: draw on an empty canvas, never on the camera image.
        split: no live frames (``posewatch ui``): tiles show the latest alert's skeleton.
    """

    def __init__(
        self,
        cameras: Sequence[str],
        max_fps: float = 4.0,
        max_width: int = 960,
        privacy: bool = False,
        split: bool = False,
    ):
        self.max_fps = max_fps
        self.max_width = max_width
        self.privacy = privacy
        self.split = split
        self.cameras: dict[str, CameraState] = {n: CameraState(n) for n in cameras}
        self.encoded = 0  # JPEGs encoded (tests and the benchmark read it)
        self.requests = 0  # live images served
        self._subs: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = []
        self._subs_lock = threading.Lock()
        self.closed = False

    # -- producer side (the service's main loop) ------------------------------------------
    def _camera(self, name: str) -> CameraState:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = CameraState(name)
        return cam

    def frame(self, view: FrameView) -> None:
        """A scored frame: keep it (a reference) and count; nothing is drawn here."""
        cam = self._camera(view.camera)
        cam.view = view
        cam.seq += 1
        cam.frames += 1
        cam.persons = len(view.persons)
        cam.alerting = len(view.alerting)
        cam.arrivals.append(time.monotonic())

    def set_states(self, states: dict[str, tuple[str, str]]) -> None:
        """Camera -> (source status, model phase)."""
        for name, (status, phase) in states.items():
            cam = self._camera(name)
            cam.status, cam.phase = status, phase

    def alert(self, alert: Alert) -> None:
        """Tell every page listening (server-sent events) about an alert message."""
        item = {"type": alert.type, "alert_id": alert.alert_id, "camera": alert.camera}
        with self._subs_lock:
            subs = list(self._subs)
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:  # that loop is closed: the page went away
                self.unsubscribe(queue)

    # -- consumer side (web server threads) -----------------------------------------------
    def states(self) -> list[dict[str, Any]]:
        return [
            {
                "name": c.name,
                "status": c.status,
                "phase": c.phase,
                "fps": round(c.fps(), 1),
                "persons": c.persons,
                "alerting": c.alerting,
                "frames": c.frames,
                "live": c.view is not None,
            }
            for c in sorted(self.cameras.values(), key=lambda c: c.name)
        ]

    def jpeg(self, name: str) -> bytes | None:
        """The camera's latest frame, annotated, as JPEG (None before its first frame).

        Encodes only when a newer frame exists and ``1 / max_fps`` has passed since the
        last encoding; otherwise every viewer gets the cached image."""
        cam = self.cameras.get(name)
        if cam is None or cam.view is None:
            return None
        self.requests += 1
        with cam.lock:
            now = time.monotonic()
            fresh = cam.jpeg_seq == cam.seq or now - cam.jpeg_at < 1.0 / self.max_fps
            if cam.jpeg is not None and fresh:
                return cam.jpeg
            view, seq = cam.view, cam.seq
            cam.jpeg = self._encode(view)
            cam.jpeg_seq, cam.jpeg_at = seq, now
            self.encoded += 1
            return cam.jpeg

    def _encode(self, view: FrameView) -> bytes:
        if self.privacy or view.image is None:
            w, h = view.image_size
            canvas = blank_canvas(w, h)
        else:
            canvas = view.image
        thr = view.threshold if view.threshold is not None else None
        out = draw_persons(canvas, view.persons, view.smoothed(), thr, view.alerting)
        if view.alerting:  # the whole tile framed red while someone is alerting
            cv2.rectangle(out, (0, 0), (out.shape[1] - 1, out.shape[0] - 1), RED, 6)
        if out.shape[1] > self.max_width:
            h = round(out.shape[0] * self.max_width / out.shape[1])
            out = cv2.resize(out, (self.max_width, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 75])
        if not ok:
            raise ValueError("cannot encode the live image as JPEG")
        return bytes(buf)

    def subscribe(self, maxsize: int = 256) -> asyncio.Queue[Any]:
        """A queue of alert events on the calling event loop."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        with self._subs_lock:
            self._subs.append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Any]) -> None:
        with self._subs_lock:
            self._subs = [(lp, q) for lp, q in self._subs if q is not queue]

    @property
    def subscribers(self) -> int:
        with self._subs_lock:
            return len(self._subs)

    def close(self) -> None:
        """End every event stream (the server is stopping)."""
        self.closed = True
        with self._subs_lock:
            subs = list(self._subs)
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_offer, queue, None)


def _offer(queue: asyncio.Queue[Any], item: Any) -> None:
    """Put without waiting; a full queue (a page that does not read) loses the item."""
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)


__all__ = ["CameraState", "LiveHub"]
