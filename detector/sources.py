"""Camera sources: video files, RTSP/HTTP streams, webcams and image folders, each read in
its own thread and watched.

Every source has a status (``starting | online | reconnecting | offline | finished``) with a
reason, and counters of frames read, dropped and reconnects. Live sources (streams,
webcams, files paced at their fps) keep only the newest ``queue_size`` frames and count what
they drop; files read as fast as possible (batch work) block instead, so no frame is lost.
A stream that fails to open, stops delivering (``read`` fails, or no frame arrives for
``no_frame_timeout`` seconds) is reopened after ``retry_interval`` seconds, doubling up to
``max_backoff``; every reopen attempt counts in ``reconnects``. Credentials in URLs never leave
:func:`redact`.

One class per kind of source (:class:`FileSource`, :class:`StreamSource`,
:class:`WebcamSource`, :class:`FolderSource`), named in :data:`SOURCE_KINDS`;
``CameraSource(name, cfg)`` (or :func:`make_source`) builds the one that ``cfg.uri`` needs.

Example:
    >>> redact("rtsp://admin:secret@10.0.0.5:554/stream1")
    'rtsp://***@10.0.0.5:554/stream1'
    >>> type(CameraSource("gate", SourceConfig(uri="rtsp://10.0.0.5/stream1"))).__name__
    'StreamSource'
    >>> sorted(SOURCE_KINDS)
    ['file', 'folder', 'stream', 'webcam']
"""

from __future__ import annotations

import enum
import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SourceKind = Literal["file", "stream", "webcam", "folder"]


class SourceStatus(enum.StrEnum):
    """Lifecycle of a camera source."""

    STARTING = "starting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"
    FINISHED = "finished"


def redact(uri: str) -> str:
    """Hide user and password of a URL (``scheme://***@host/...``); other strings unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def source_kind(uri: str) -> SourceKind:
    """``webcam`` for an integer, ``stream`` for a URL, ``folder`` for a directory, else ``file``."""
    if uri.isdigit():
        return "webcam"
    if "://" in uri:
        return "stream"
    if Path(uri).is_dir():
        return "folder"
    return "file"


@dataclass(slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        camera: camera name.
        index: frame index in the source (from 0; continues across reconnects and loops).
        timestamp: seconds (UNIX time for live sources, ``index / fps`` for files).
        image: ``(H, W, 3)`` uint8 BGR.
        read_at: ``time.monotonic()`` when it was decoded (for latency).
        decode_s: seconds the read and decode took.
    """

    camera: str
    index: int
    timestamp: float
    image: np.ndarray
    read_at: float = 0.0
    decode_s: float = 0.0


@dataclass(slots=True)
class SourceStats:
    """Counters and state of one source (a snapshot).

    Attributes:
        camera: camera name.
        kind: the source's kind (see :data:`SOURCE_KINDS`).
        uri: the source URI with credentials redacted.
        status: lifecycle state; ``reason`` says why (empty when online).
        frames_read: frames decoded and queued since start.
        frames_dropped: frames discarded: the oldest queued ones of a live source the consumer
            did not take in time, and unreadable images of a folder.
        reconnects: reopen attempts of a stream or webcam since start (each counted when it
            starts, whether it then succeeds or not); 0 for files and folders.
        fps: the source's frame rate (frames/s; 0 until known).
        expected_frames: frames a file or folder announces, None when unknown or live.
    """

    camera: str
    kind: SourceKind
    uri: str  # redacted
    status: SourceStatus
    reason: str
    frames_read: int
    frames_dropped: int
    reconnects: int
    fps: float
    expected_frames: int | None = None


@dataclass
class SourceConfig:
    """How to read one camera.

    Attributes:
        uri: file path, ``rtsp://`` / ``http://`` URL, webcam index or image folder.
        fps: frame rate; None = the source's own (files), 10 for folders without it.
        pace: play files at their fps, as a camera would (files only).
        loop: restart files at the end (files and folders).
        queue_size: frames kept for the consumer (live sources drop the oldest beyond it).
        no_frame_timeout: seconds without a frame before a stream is reopened.
        retry_interval: first wait before reopening; doubles up to ``max_backoff``.
        max_backoff: longest wait between reopen attempts.
        max_retries: give up (``offline``) after this many failed opens in a row; None = never.
    """

    uri: str
    fps: float | None = None
    pace: bool = False
    loop: bool = False
    queue_size: int = 4
    no_frame_timeout: float = 10.0
    retry_interval: float = 2.0
    max_backoff: float = 30.0
    max_retries: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SourceError(RuntimeError):
    """A source ended with an error (message names the camera and the redacted URI)."""


class CameraSource:
    """Reads one camera in a background thread; :meth:`read` returns its frames.

    ``CameraSource(name, cfg)`` returns the subclass that ``cfg.uri`` needs
    (``SOURCE_KINDS[source_kind(cfg.uri)]``); a subclass called directly is that kind
    whatever the URI looks like. The base class holds what every kind shares: the reader
    thread, the frame queue (blocking or dropping, see :attr:`live`), status, counters,
    :meth:`read`, :meth:`stop`, :meth:`stats`, :attr:`done`. A kind implements
    :meth:`_produce`, run in the thread (an exception there sets the source ``offline``
    with :attr:`error`).

    Arguments:
        name: camera name.
        cfg: source configuration.

    Attributes:
        kind: ``file``, ``stream``, ``webcam`` or ``folder`` (a class attribute).
        live: keeps only the newest ``cfg.queue_size`` frames and counts the rest as dropped
            (streams, webcams, and files or folders with ``cfg.pace``); otherwise the reader
            blocks until the consumer takes a frame, so none is lost.
        error: why the source ended in error (camera name and redacted URI), else None.
    """

    kind: ClassVar[SourceKind]
    #: Always live (streams, webcams); files and folders are live only when paced.
    always_live: ClassVar[bool] = False
    #: :meth:`stats` reports ``reconnecting`` once no frame came for ``no_frame_timeout`` s.
    watch_idle: ClassVar[bool] = False

    def __new__(cls, name: str, cfg: SourceConfig) -> Self:
        if cls is CameraSource:
            return cast(Self, object.__new__(SOURCE_KINDS[source_kind(cfg.uri)]))
        return object.__new__(cls)

    def __init__(self, name: str, cfg: SourceConfig):
        self.name = name
        self.cfg = cfg
        self.safe_uri = redact(cfg.uri)
        self.live = self.always_live or cfg.pace
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=max(1, cfg.queue_size))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status = SourceStatus.STARTING
        self._reason = "not started"
        self._read = 0
        self._dropped = 0
        self._reconnects = 0
        self._fps = float(cfg.fps or 0.0)
        self._expected: int | None = None
        self._last_frame = time.monotonic()
        self.error: str | None = None

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the reader thread; returns the source itself."""
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the reader thread to end and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def read(self, timeout: float | None = None) -> Frame | None:
        """Next frame, or None after ``timeout`` seconds / when the source has ended."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    @property
    def done(self) -> bool:
        """The source ended (finished or offline) and every frame was consumed."""
        return self.status in (SourceStatus.FINISHED, SourceStatus.OFFLINE) and self._queue.empty()

    @property
    def status(self) -> SourceStatus:
        return self._status

    def stats(self) -> SourceStats:
        """A snapshot of status and counters (thread-safe)."""
        with self._lock:
            status, reason = self._status, self._reason
            if status == SourceStatus.ONLINE and self.watch_idle:
                idle = time.monotonic() - self._last_frame
                if idle > self.cfg.no_frame_timeout:
                    status, reason = SourceStatus.RECONNECTING, f"no frame for {idle:.0f} s"
            return SourceStats(
                self.name,
                self.kind,
                self.safe_uri,
                status,
                reason,
                self._read,
                self._dropped,
                self._reconnects,
                self._fps,
                self._expected,
            )

    # -- for the kinds --------------------------------------------------------------------------
    def _produce(self) -> None:
        """Read the source until it ends or :meth:`stop` is called (runs in the thread)."""
        raise NotImplementedError

    def _set(self, status: SourceStatus, reason: str) -> None:
        with self._lock:
            changed = status != self._status or reason != self._reason
            self._status, self._reason = status, reason
        if changed:
            level = (
                logging.WARNING
                if status in (SourceStatus.RECONNECTING, SourceStatus.OFFLINE)
                else logging.INFO
            )
            log.log(
                level,
                "camera %r (%s): %s%s",
                self.name,
                self.safe_uri,
                status.value,
                f" ({reason})" if reason else "",
            )

    def _put(self, frame: Frame) -> None:
        if not self.live:
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.2)
                    break
                except queue.Full:
                    continue
        else:
            while True:
                try:
                    self._queue.put_nowait(frame)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        with self._lock:
                            self._dropped += 1
                    except queue.Empty:
                        pass
        with self._lock:
            self._read += 1
            self._last_frame = time.monotonic()

    def _count_reconnect(self) -> None:
        with self._lock:
            self._reconnects += 1

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _run(self) -> None:
        try:
            self._produce()
        except Exception as exc:  # a broken camera must never take the process down
            self.error = f"camera {self.name!r} ({self.safe_uri}): {redact(str(exc))}"
            self._set(SourceStatus.OFFLINE, redact(str(exc)))


class _CaptureSource(CameraSource):
    """A source read through ``cv2.VideoCapture`` (files, streams, webcams)."""

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.cfg.uri)

    def _opened(self, cap: cv2.VideoCapture) -> None:
        """Called once ``cap`` is open, before the first read: takes its frame rate."""
        fps = self.cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 0.0
        self._fps = float(fps) if fps and math.isfinite(fps) and fps < 1000 else 10.0

    def _input_ended(self, got: int) -> str:
        """``read`` failed after ``got`` frames of this opening: why (``truncated`` ends it)."""
        raise NotImplementedError

    def _stamp(self, index: int, start_index: int, t0: float, period: float) -> float:
        """Timestamp of frame ``index`` (s); may wait to pace the source."""
        raise NotImplementedError

    def _read_loop(self, cap: cv2.VideoCapture, index: int) -> tuple[int, str]:
        start_index = index
        t0 = time.monotonic()
        period = 1.0 / self._fps if self._fps > 0 else 0.0
        while not self._stop.is_set():
            t_read = time.monotonic()
            ok, image = cap.read()
            decode_s = time.monotonic() - t_read
            if not ok or image is None:
                return index, self._input_ended(index - start_index)
            ts = self._stamp(index, start_index, t0, period)
            self._put(Frame(self.name, index, ts, image, time.monotonic(), decode_s))
            index += 1
        return index, "stopped"

    def _finish(self) -> None:
        if self._status not in (SourceStatus.OFFLINE, SourceStatus.FINISHED):
            self._set(SourceStatus.FINISHED, "stopped")


class FileSource(_CaptureSource):
    """A video file: read as fast as the consumer takes frames, or paced at its fps
    (``cfg.pace``), looped with ``cfg.loop``. A missing, unreadable or truncated file (fewer
    frames than its header announces, beyond 1% or 2 frames) ends ``offline`` with
    :attr:`error` naming the file."""

    kind = "file"

    def _produce(self) -> None:
        if not os.path.exists(self.cfg.uri):
            self.error = f"camera {self.name!r}: video file {self.cfg.uri} does not exist"
            self._set(SourceStatus.OFFLINE, "file does not exist")
            return
        index = 0
        while not self._stop.is_set():
            cap = self._open()
            if not cap.isOpened():
                cap.release()
                self.error = f"camera {self.name!r}: cannot open video file {self.cfg.uri} (not a video, or truncated)"
                self._set(SourceStatus.OFFLINE, "cannot open file (not a video, or truncated)")
                return
            self._opened(cap)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self._expected = n if n > 0 else None
            self._set(SourceStatus.ONLINE, "")
            index, ended = self._read_loop(cap, index)
            cap.release()
            if self._stop.is_set():
                break
            if ended == "truncated":
                return
            if self.cfg.loop:
                continue
            self._set(SourceStatus.FINISHED, "end of file")
            return
        self._finish()

    def _input_ended(self, got: int) -> str:
        exp = self._expected
        if exp is not None and got < exp - max(2, int(0.01 * exp)):
            self.error = (
                f"camera {self.name!r}: video file {self.cfg.uri} ended after {got} of "
                f"{exp} frames (truncated or corrupt)"
            )
            self._set(
                SourceStatus.OFFLINE,
                f"ended after {got} of {exp} frames (truncated or corrupt)",
            )
            return "truncated"
        return "end of file"

    def _stamp(self, index: int, start_index: int, t0: float, period: float) -> float:
        if self.cfg.pace and period:
            delay = t0 + (index - start_index + 1) * period - time.monotonic()
            if delay > 0:
                self._wait(delay)
        return index * period if period else float(index)


class _LiveCaptureSource(_CaptureSource):
    """A live capture (stream, webcam): reopened with backoff whenever it fails to open or
    stops delivering; every reopen attempt counts in ``reconnects``."""

    always_live = True

    def _produce(self) -> None:
        index = 0
        failures = 0
        backoff = self.cfg.retry_interval
        first = True
        while not self._stop.is_set():
            if not first:
                self._count_reconnect()
            first = False
            cap = self._open()
            if not cap.isOpened():
                cap.release()
                failures += 1
                if self.cfg.max_retries is not None and failures > self.cfg.max_retries:
                    self._set(SourceStatus.OFFLINE, f"cannot open after {failures} attempts")
                    return
                self._set(
                    SourceStatus.RECONNECTING,
                    f"cannot open {self.safe_uri}; retrying in {backoff:.0f} s",
                )
                self._wait(backoff)
                backoff = min(backoff * 2, self.cfg.max_backoff)
                continue
            failures = 0
            backoff = self.cfg.retry_interval
            self._opened(cap)
            self._set(SourceStatus.ONLINE, "")
            index, ended = self._read_loop(cap, index)
            cap.release()
            if self._stop.is_set():
                break
            self._set(SourceStatus.RECONNECTING, f"{ended}; reopening in {backoff:.0f} s")
            self._wait(backoff)
            backoff = min(backoff * 2, self.cfg.max_backoff)
        self._finish()

    def _input_ended(self, got: int) -> str:
        return "stream stopped delivering frames"

    def _stamp(self, index: int, start_index: int, t0: float, period: float) -> float:
        return time.time()


class StreamSource(_LiveCaptureSource):
    """An RTSP/HTTP stream through FFmpeg, with open and read timeouts from
    ``cfg.no_frame_timeout`` (open: at most 30 s); :meth:`stats` reports ``reconnecting``
    once no frame came for ``no_frame_timeout`` seconds."""

    kind = "stream"
    watch_idle = True

    def _open(self) -> cv2.VideoCapture:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(1000 * min(self.cfg.no_frame_timeout, 30)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(1000 * self.cfg.no_frame_timeout),
        ]
        return cv2.VideoCapture(self.cfg.uri, cv2.CAP_FFMPEG, params)


class WebcamSource(_LiveCaptureSource):
    """A local camera by index (``cfg.uri`` is its number, e.g. ``"0"``)."""

    kind = "webcam"

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(int(self.cfg.uri))


class FolderSource(CameraSource):
    """A folder of images (sorted by name; suffixes in ``IMAGE_SUFFIXES``) played at
    ``cfg.fps`` (10 by default); unreadable images are skipped and counted as dropped, an
    empty folder ends ``offline``."""

    kind = "folder"

    def _produce(self) -> None:
        folder = Path(self.cfg.uri)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            self.error = f"camera {self.name!r}: no images in folder {folder}"
            self._set(SourceStatus.OFFLINE, "no images in folder")
            return
        self._fps = float(self.cfg.fps or 10.0)
        self._expected = len(files)
        self._set(SourceStatus.ONLINE, "")
        index = 0
        t0 = time.monotonic()
        while not self._stop.is_set():
            for p in files:
                if self._stop.is_set():
                    break
                image = cv2.imread(str(p))
                if image is None:
                    log.warning("camera %r: skipping unreadable image %s", self.name, p)
                    with self._lock:
                        self._dropped += 1
                    continue
                if self.cfg.pace:
                    delay = t0 + (index + 1) / self._fps - time.monotonic()
                    if delay > 0:
                        self._wait(delay)
                self._put(Frame(self.name, index, index / self._fps, image, time.monotonic()))
                index += 1
            if not self.cfg.loop:
                break
        if not self._stop.is_set():
            self._set(SourceStatus.FINISHED, "end of folder")


#: The source class of each kind (what :func:`source_kind` names).
SOURCE_KINDS: dict[SourceKind, type[CameraSource]] = {
    "file": FileSource,
    "stream": StreamSource,
    "webcam": WebcamSource,
    "folder": FolderSource,
}


def make_source(name: str, cfg: SourceConfig, kind: SourceKind | None = None) -> CameraSource:
    """A new (not started) source of ``kind`` (default: :func:`source_kind` of ``cfg.uri``).

    Raises:
        KeyError: ``kind`` is not in :data:`SOURCE_KINDS`.
    """
    return SOURCE_KINDS[kind or source_kind(cfg.uri)](name, cfg)
