"""Camera sources: video files, RTSP/HTTP streams, webcams and image folders, each read in
its own thread and watched.

Every source has a status (``starting | online | reconnecting | offline | finished``) with a
reason, and counters of frames read, dropped and reconnects. Live sources (streams,
webcams, files paced at their fps) keep only the newest ``queue_size`` frames and count what
they drop; files read as fast as possible (batch work) block instead, so no frame is lost.
A stream that fails to open, stops delivering (``read`` fails, or no frame arrives for
``no_frame_timeout`` seconds) is reopened after ``retry_interval`` seconds, doubling up to
``max_backoff``; every reopen attempt counts in ``reconnects``. A video file that is not
found is looked for again on the same schedule (:class:`FileSource`). A frame rate that is
not plausible (:func:`plausible_fps`) is replaced and logged once. A live camera whose
picture freezes (it keeps sending byte-identical frames: a stalled encoder or NVR; a real
sensor's noise makes any two frames differ) is treated as one that stopped delivering: the
repeated frames are dropped (counted in ``frames_dropped``; their indices are skipped, so
downstream sees a gap, never a person standing perfectly still) and after
``no_frame_timeout`` seconds it is reopened. A source faster than its ``detect_fps`` passes
on at most that many frames per second and counts the others in ``frames_skipped`` (they are
decoded, never detected). Credentials in URLs never leave :func:`redact`.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, cast

import cv2
import numpy as np

from detector.containers import ContainerCheck, avi_frame_rate, check_container
from detector.pose import MAX_FPS, MIN_FPS
from detector.redaction import redact as redact  # re-exported: detector.sources.redact

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SourceKind = Literal["file", "stream", "webcam", "folder"]
#: Frame rates a header may state (frames/s, from :data:`~detector.pose.MIN_FPS`, the least
#: a pose message carries, to below 1000): 0, NaN, negative, under 0.1 or >= 1000 (an RTSP
#: clock rate, a Matroska time base) are not frame rates.
PLAUSIBLE_FPS = (MIN_FPS, MAX_FPS)
#: Frame rate used when the source states no plausible one and none can be derived.
FALLBACK_FPS = 10.0


def plausible_fps(fps: float | None) -> bool:
    """Whether ``fps`` (frames/s) is a frame rate a camera or file can have.

    >>> [plausible_fps(v) for v in (25.0, 0.0, float("nan"), 90000.0, None)]
    [True, False, False, False, False]
    """
    return fps is not None and math.isfinite(fps) and PLAUSIBLE_FPS[0] <= fps < PLAUSIBLE_FPS[1]


class SourceStatus(enum.StrEnum):
    """Lifecycle of a camera source."""

    STARTING = "starting"
    ONLINE = "online"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"
    FINISHED = "finished"


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
        index: frame index in the source (from 0; continues across reconnects and loops);
            with ``detect_fps``, the index of its slot at that rate.
        timestamp: seconds (UNIX time for live sources, ``index / fps`` for files).
        image: ``(H, W, 3)`` uint8 BGR.
        read_at: ``time.monotonic()`` when it was decoded (for latency).
        decode_s: seconds the read and decode took.
        fps: the source's frame rate when the frame was read (frames/s; 0: not known, e.g.
            a stream stating no plausible rate and giving no timestamps to derive one).
    """

    camera: str
    index: int
    timestamp: float
    image: np.ndarray
    read_at: float = 0.0
    decode_s: float = 0.0
    fps: float = 0.0


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
            did not take in time, repeats of a live camera's frozen picture, and
            unreadable images of a folder.
        reconnects: reopen attempts of a stream or webcam, and new looks for a video file
            that was not found, since start (each counted when it starts, whether it then
            succeeds or not); 0 for folders.
        fps: the source's frame rate (frames/s; 0 until known).
        expected_frames: frames a file or folder announces, None when unknown or live (or
            when the file's header rate was implausible: its count is not trusted either).
        frames_skipped: frames read and skipped to keep to ``detect_fps`` (not in
            ``frames_read``).
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
    frames_skipped: int = 0


@dataclass
class SourceConfig:
    """How to read one camera.

    Attributes:
        uri: file path, ``rtsp://`` / ``http://`` URL, webcam index or image folder.
        fps: frame rate; None = the source's own (files), 10 for folders without it.
        pace: play files at their fps, as a camera would (files only).
        loop: restart files at the end (files and folders).
        queue_size: frames kept for the consumer (live sources drop the oldest beyond it).
        no_frame_timeout: seconds without a frame, or with one frozen picture (a live
            camera sending byte-identical frames), before a stream or webcam is reopened.
        retry_interval: first wait before reopening; doubles up to ``max_backoff``.
        max_backoff: longest wait between reopen attempts.
        max_retries: give up (``offline``) after this many failed opens in a row (for a
            video file: failed looks for it while it is not found; ``extract`` uses 0);
            None = never.
        detect_fps: frames passed on per second at most (Frigate's ``detect.fps``): a
            faster source's other frames are read and skipped before detection (counted in
            ``frames_skipped``), and the frames passed on form a camera at this rate
            (``Frame.fps`` = ``detect_fps``, ``Frame.index`` counting its slots; see
            :meth:`CameraSource._detect_rate`). None: every frame.
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
    detect_fps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SourceError(RuntimeError):
    """A source ended with an error (message names the camera and the redacted URI)."""


class IncompleteVideoError(SourceError):
    """A video file ended before all its frames: truncated, or shorter than its header
    claims in a container that cannot prove it whole. Raised after every frame that could
    be decoded was delivered.

    Attributes:
        frames_read: frames decoded.
        frames_claimed: frames the header claims (None when it states none).
    """

    def __init__(self, message: str, frames_read: int, frames_claimed: int | None):
        super().__init__(message)
        self.frames_read = frames_read
        self.frames_claimed = frames_claimed


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
        self._skipped = 0
        self._clock: tuple[float, int, float] | None = None  # detect rate: s, index, read_at
        self._slot = -1  # the detect-rate frame last passed on
        self._fps = float(cfg.fps or 0.0)
        self._expected: int | None = None
        self._last_frame = time.monotonic()
        self._rate_trusted = True
        self._derived = False  # the rate was derived from the frames' timestamps
        self._rate_logged = False
        self._previous: np.ndarray | None = None  # the last image of a live camera
        self._frozen = False  # its picture has repeated since the last new frame
        self.error: str | None = None

    # -- public ---------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the reader thread; returns the source itself.

        Raises:
            RuntimeError: the source was started before (a second reader of one camera
                would read its frames twice and miscount them).
        """
        if self._thread is not None:
            raise RuntimeError(f"camera {self.name!r}: its reader is already started")
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
                    what = "picture frozen" if self._frozen else "no frame"
                    status, reason = SourceStatus.RECONNECTING, f"{what} for {idle:.0f} s"
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
                self._skipped,
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

    def _detect_rate(self, frame: Frame) -> Frame | None:
        """``frame`` as a frame of the ``detect_fps`` camera, or None when it is skipped.

        The source's time runs on by the index steps over the frame's rate (``Frame.fps``;
        a live source whose rate is not known: by the frames' arrival, ``read_at``), so a
        reconnect at another rate, or an index gap (a frozen picture's repeats), is followed.
        Every ``1 / detect_fps`` seconds the first frame is passed on as ``index`` = that
        slot's number and ``fps`` = ``detect_fps``: downstream sees one camera at
        ``detect_fps`` (one number line, whatever rate each opening had), each frame at most
        one source frame after its slot's time. A file or folder whose rate is not known
        passes every frame unchanged: its rate is a guess, which must not decide what is
        skipped (it states ``fps`` 0; :meth:`stats` has the guess).
        """
        d = self.cfg.detect_fps
        if not d or (frame.fps <= 0 and not self.always_live):
            return frame
        clock = self._clock
        if clock is None:
            at = 0.0
        elif frame.fps > 0:
            at = clock[0] + max(frame.index - clock[1], 0) / frame.fps
        else:
            at = clock[0] + max(frame.read_at - clock[2], 0.0)
        self._clock = (at, frame.index, frame.read_at)
        slot = math.floor(at * d + 1e-6)
        if slot <= self._slot:
            with self._lock:
                self._skipped += 1
                self._last_frame = time.monotonic()  # a frame came: the camera is alive
            return None
        self._slot = slot
        return replace(frame, index=slot, fps=d)

    def _put(self, frame: Frame) -> None:
        passed = self._detect_rate(frame)
        if passed is None:
            return
        frame = passed
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

    def _repeated(self, image: np.ndarray) -> bool:
        """Whether a live camera's ``image`` is byte-identical to its previous frame (a
        frozen picture: counted as dropped, and the time since the last new frame keeps
        running). Files and folders never repeat-drop: their content is what it is."""
        prev, self._previous = self._previous, image
        same = (
            self.always_live
            and prev is not None
            and prev.shape == image.shape
            and np.array_equal(prev[::16, ::16], image[::16, ::16])  # cheap first look
            and np.array_equal(prev, image)
        )
        with self._lock:
            self._frozen = same
            self._dropped += int(same)
        return same

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
        """Called once ``cap`` is open, before the first read: takes its frame rate.

        ``cfg.fps`` when set; else the rate the source states (:meth:`_stated_fps`) when
        :func:`plausible_fps`; else one derived from the frames' own timestamps
        (:meth:`_timestamp_fps`), else :data:`FALLBACK_FPS`; a replaced rate is logged once
        (warning) with the value used and how to set it.
        """
        if self.cfg.fps:
            self._fps, self._rate_trusted = float(self.cfg.fps), True
            return
        stated = self._stated_fps(cap)
        if plausible_fps(stated):
            self._fps, self._rate_trusted = stated, True
            return
        derived = self._timestamp_fps()
        used = derived if derived is not None else FALLBACK_FPS
        how = "derived from its frames' timestamps" if derived is not None else "instead"
        self._fps, self._rate_trusted, self._derived = used, False, derived is not None
        if not self._rate_logged:
            self._rate_logged = True
            log.warning(
                "camera %r (%s): its stated frame rate, %s fps, is not plausible; using %.6g "
                "fps %s. Set the right rate with the camera's `fps` setting (or "
                "`posewatch extract --fps`)",
                self.name,
                self.safe_uri,
                f"{stated:g}",
                used,
                how,
            )

    def _stated_fps(self, cap: cv2.VideoCapture) -> float:
        """The frame rate the opened source states (frames/s; 0 or NaN when none)."""
        v = cap.get(cv2.CAP_PROP_FPS)
        return float(v) if v is not None else math.nan

    def _timestamp_fps(self) -> float | None:
        """A frame rate derived from the source's own frame timestamps, None if it has none
        (live sources: timestamps are the arrival times)."""
        return None

    def _input_ended(self, got: int) -> str:
        """``read`` failed after ``got`` frames of this opening: why (``truncated`` ends it)."""
        raise NotImplementedError

    def _stamp(self, index: int, start_index: int, t0: float, period: float) -> float:
        """Timestamp of frame ``index`` (s); may wait to pace the source."""
        raise NotImplementedError

    def _read_loop(self, cap: cv2.VideoCapture, index: int) -> tuple[int, str]:
        start_index = index
        t0 = time.monotonic()
        with self._lock:
            self._frozen = False  # a new opening: frozen again only once it repeats
        period = 1.0 / self._fps if self._fps > 0 else 0.0
        while not self._stop.is_set():
            t_read = time.monotonic()
            ok, image = cap.read()
            decode_s = time.monotonic() - t_read
            if not ok or image is None:
                return index, self._input_ended(index - start_index)
            if self._repeated(image):
                index += 1  # the index runs on: downstream sees the frozen time as a gap
                frozen = time.monotonic() - max(self._last_frame, t0)  # in this opening
                if frozen > self.cfg.no_frame_timeout:
                    return index, f"picture frozen for {frozen:.0f} s"
                continue
            ts = self._stamp(index, start_index, t0, period)
            self._put(Frame(self.name, index, ts, image, time.monotonic(), decode_s, self._rate()))
            index += 1
        return index, "stopped"

    def _rate(self) -> float:
        """The rate frames state (``Frame.fps``): the configured, stated or timestamp-derived
        one; 0 (not known) for the fallback guess, which must not place frames in time."""
        return self._fps if self._rate_trusted or self._derived else 0.0

    def _finish(self) -> None:
        if self._status not in (SourceStatus.OFFLINE, SourceStatus.FINISHED):
            self._set(SourceStatus.FINISHED, "stopped")


class FileSource(_CaptureSource):
    """A video file: read as fast as the consumer takes frames, or paced at its fps
    (``cfg.pace``), looped with ``cfg.loop``.

    - A file that is **not found** is looked for again after ``retry_interval`` seconds,
      doubling up to ``max_backoff`` (status ``reconnecting``, reason ``file not found``;
      each new look counts in ``reconnects``), so a camera whose file is restored comes
      back; after ``max_retries`` failed looks (``0``: at once, as ``extract`` does) it ends
      ``offline`` with :attr:`error` saying the file was not found.
    - A file that exists but cannot be opened (not a video, unreadable, cut before its
      index) ends ``offline`` with :attr:`error` saying which (:mod:`detector.containers`).
    - A file whose container shows it truncated, or that ends before the frame count its
      header claims (beyond 1% or 2 frames) in a container that cannot show it whole, is
      **incomplete**: it ends ``offline`` with :attr:`error` (and :attr:`incomplete`) after
      every decodable frame was delivered. When the container is whole, a short read means
      the header over-states the count: a warning (once) says how many frames were read of
      how many it claimed, and the file ends (or loops) normally.
    """

    kind = "file"

    def __init__(self, name: str, cfg: SourceConfig):
        super().__init__(name, cfg)
        #: Frames read and claimed when the file ended incomplete (see the class), else None.
        self.incomplete: tuple[int, int | None] | None = None
        self._short_logged = False

    def _produce(self) -> None:
        index = 0
        while not self._stop.is_set():
            if not self._wait_for_file():
                return
            cap = self._open()
            if not cap.isOpened():
                cap.release()
                if not os.path.exists(self.cfg.uri):
                    continue  # deleted between the look and the open: look again
                why = unopenable_reason(self.cfg.uri)
                self.error = f"camera {self.name!r}: cannot open video file {self.cfg.uri} ({why})"
                self._set(SourceStatus.OFFLINE, f"cannot open file ({why})")
                return
            self._opened(cap)
            self._expected = stated_frame_count(self.cfg.uri, cap) if self._rate_trusted else None
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

    def _wait_for_file(self) -> bool:
        """Look for the file until it exists (True), ``max_retries`` looks failed (False,
        ``offline``) or the source is stopped (False)."""
        failures = 0
        backoff = self.cfg.retry_interval
        while not os.path.exists(self.cfg.uri):
            failures += 1
            if self.cfg.max_retries is not None and failures > self.cfg.max_retries:
                looks = f" after {failures} looks" if failures > 1 else ""
                self.error = f"camera {self.name!r}: video file {self.cfg.uri} not found{looks}"
                self._set(SourceStatus.OFFLINE, f"file not found{looks}")
                return False
            self._set(SourceStatus.RECONNECTING, f"file not found; looking again in {backoff:g} s")
            self._wait(backoff)
            if self._stop.is_set():
                return False
            backoff = min(backoff * 2, self.cfg.max_backoff)
            self._count_reconnect()
        return True

    def _stated_fps(self, cap: cv2.VideoCapture) -> float:
        # FFmpeg reads an AVI header rate of 0 as 25 fps: ask the header itself.
        try:
            avi = avi_frame_rate(self.cfg.uri)
        except OSError:
            avi = None
        return avi if avi == 0.0 else super()._stated_fps(cap)

    def _timestamp_fps(self) -> float | None:
        try:
            if not check_container(self.cfg.uri).timestamps:
                return None
        except OSError:
            return None
        return timestamp_fps(self.cfg.uri)

    def _input_ended(self, got: int) -> str:
        exp = self._expected
        try:
            check = check_container(self.cfg.uri)
        except OSError as exc:  # deleted or unreadable now: judge by the count alone
            check = ContainerCheck("unknown", None, f"cannot check the file ({exc})", False)
        claimed = ""
        if exp is not None:
            claimed = f" of the {exp} its header claims" if got < exp else f" (its header: {exp})"
        short = exp is not None and got < exp - max(2, int(0.01 * exp))
        if check.truncated or (check.truncated is None and short):
            whole = f"a {check.kind} container cannot show the file whole"
            why = check.detail if check.truncated else whole
            self.incomplete = (got, exp)
            self.error = (
                f"camera {self.name!r}: video file {self.cfg.uri} is incomplete: read {got} "
                f"frames{claimed}; {why}"
            )
            self._set(SourceStatus.OFFLINE, f"incomplete: read {got} frames{claimed} (truncated)")
            return "truncated"
        if short and not self._short_logged:
            self._short_logged = True
            log.warning(
                "camera %r: video file %s: read %d frames%s; the file itself is whole (%s): "
                "its header over-states the frame count",
                self.name,
                self.cfg.uri,
                got,
                claimed,
                check.detail,
            )
        return "end of file"

    def _stamp(self, index: int, start_index: int, t0: float, period: float) -> float:
        if self.cfg.pace and period:
            delay = t0 + (index - start_index + 1) * period - time.monotonic()
            if delay > 0:
                self._wait(delay)
        return index * period if period else float(index)


def stated_frame_count(path: str, cap: cv2.VideoCapture) -> int | None:
    """The frame count the header of the video file ``path`` (open in ``cap``) states;
    None when it states none, or a frame rate that is not plausible (the count is then
    often duration x that rate, and no more to be trusted)."""
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    if not n or not math.isfinite(n) or n <= 0 or not plausible_fps(cap.get(cv2.CAP_PROP_FPS)):
        return None
    try:
        if avi_frame_rate(path) == 0.0:
            return None
    except OSError:
        return None
    return int(n)


def unopenable_reason(path: str) -> str:
    """Why OpenCV cannot open an existing file ``path``, in a few words."""
    if not os.access(path, os.R_OK):
        return "permission denied"
    if os.path.getsize(path) == 0:
        return "the file is empty"
    try:
        check = check_container(path)
    except OSError as exc:
        return f"cannot read it: {exc}"
    if check.truncated:
        return check.detail
    if check.kind == "unknown":
        return "not a video: no container format OpenCV can read"
    return f"a {check.kind} file OpenCV cannot decode ({check.detail})"


def timestamp_fps(path: str, frames: int = 16) -> float | None:
    """The frame rate of a video file's first ``frames`` frames from their presentation
    timestamps (one over the median positive spacing), None when they give no plausible
    rate. Grabs without decoding; a separate capture, closed before returning."""
    cap = cv2.VideoCapture(path)
    stamps: list[float] = []
    try:
        while cap.isOpened() and len(stamps) < frames and cap.grab():
            stamps.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    finally:
        cap.release()
    gaps = np.diff(np.asarray(stamps, np.float64))
    gaps = gaps[np.isfinite(gaps) & (gaps > 0)]
    if gaps.size == 0:
        return None
    fps = 1000.0 / float(np.median(gaps))
    return fps if plausible_fps(fps) else None


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
                ts = index / self._fps
                rate = float(self.cfg.fps or 0.0)  # 10 fps is a convention, not the rate
                self._put(Frame(self.name, index, ts, image, time.monotonic(), fps=rate))
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
