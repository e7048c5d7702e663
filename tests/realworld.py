"""Small odd input files made from the shared data (issue 19): pieces of real AIHub2 clips,
short videos re-encoded from vtest.avi, AVI headers edited in place, and a pose model that
needs no weights. Nothing here is committed data: every test writes its inputs under
``tmp_path``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.engine.results import Boxes

from detector.datasets import load_split
from detector.pose import Track
from detector.pose_model import Detections
from detector.posefiles import write_stgnf


def clip_piece(
    aihub2: Path, split: str, clip: int, start: int, stop: int
) -> tuple[str, dict[int, Track], np.ndarray]:
    """Frames ``start .. stop - 1`` of a real AIHub2 clip, renumbered from 0.

    Returns:
        ``(clip name, {track id: Track}, labels of those frames)``.
    """
    c = load_split(aihub2, split)[clip]
    tracks = {}
    for tid, tr in c.tracks.items():
        rows = {int(f) - start: r for f, r in tr.rows().items() if start <= f < stop}
        if rows:
            tracks[tid] = Track.from_rows(tid, rows)
    assert c.labels is not None
    return c.name, tracks, c.labels[start:stop].copy()


def write_dataset(
    root: Path, split: str, clips: dict[str, tuple[dict[int, Track], np.ndarray | None]]
) -> Path:
    """An AIHub2-layout dataset: ``pose/<split>/<name>_alphapose_tracked_person.json`` and
    ``gt/<name>.npy`` per clip (no label file when the labels are None)."""
    for name, (tracks, labels) in clips.items():
        write_stgnf(root / "pose" / split / f"{name}_alphapose_tracked_person.json", tracks)
        if labels is not None:
            (root / "gt").mkdir(parents=True, exist_ok=True)
            np.save(root / "gt" / f"{name}.npy", labels)
    return root


def vtest_frames(videos: Path, n: int, width: int = 160) -> list[np.ndarray]:
    """The first ``n`` frames of vtest.avi, scaled to ``width`` pixels wide."""
    cap = cv2.VideoCapture(str(videos / "vtest.avi"))
    out = []
    while len(out) < n:
        ok, image = cap.read()
        assert ok, "vtest.avi has fewer frames than asked"
        h = round(image.shape[0] * width / image.shape[1])
        out.append(cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA))
    cap.release()
    return out


def write_video(path: Path, frames: Sequence[np.ndarray], fourcc: str, fps: float = 25.0) -> Path:
    """Encode ``frames`` with OpenCV (``MJPG`` for .avi / .mkv, ``mp4v`` for .mp4)."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path}"
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def patch_avi(path: Path, total: int | None = None, rate: tuple[int, int] | None = None) -> None:
    """Edit an AVI header in place: the frame count (``avih`` and the video ``strh``) and
    the video stream's ``(dwScale, dwRate)``."""
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    strh = data.find(b"strhvids") if b"strhvids" in data else data.find(b"strh")
    assert avih > 0 and strh > 0 and data[strh + 8 : strh + 12] == b"vids"
    if total is not None:
        struct.pack_into("<I", data, avih + 8 + 16, total)  # dwTotalFrames
        struct.pack_into("<I", data, strh + 8 + 32, total)  # dwLength
    if rate is not None:
        struct.pack_into("<II", data, strh + 8 + 20, *rate)  # dwScale, dwRate
        struct.pack_into("<I", data, avih + 8, 0)  # dwMicroSecPerFrame
    path.write_bytes(bytes(data))


def decodable_frames(path: Path) -> int:
    """Frames OpenCV decodes from a video file."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


class OnePersonModel:
    """A pose model without weights: one person in the middle of every image (what
    :class:`~detector.stage.DetectStage` needs from a model: ``predict``, and what the CLI
    prints: ``backend``, ``imgsz``)."""

    backend = "fake"
    imgsz = 0

    def __init__(self, *args: Any, **kwargs: Any):
        self.frames = 0

    def predict(self, frames: Sequence[np.ndarray], /) -> list[Detections]:
        out = []
        for f in frames:
            self.frames += 1
            h, w = f.shape[:2]
            box = np.array([[w * 0.3, h * 0.2, w * 0.6, h * 0.9]], np.float32)
            t = np.linspace(0, 1, 17, dtype=np.float32)
            kp = np.empty((1, 17, 3), np.float32)
            kp[0, :, 0] = box[0, 0] + t * (box[0, 2] - box[0, 0])
            kp[0, :, 1] = box[0, 1] + t * (box[0, 3] - box[0, 1])
            kp[0, :, 2] = 0.8
            scores = np.full(1, 0.9, np.float32)
            raw = Boxes(np.c_[box, scores, np.zeros(1, np.float32)], orig_shape=(h, w))
            out.append(Detections(box, scores, kp, raw, (w, h)))
        return out


def stgnf_json(path: Path) -> dict[str, Any]:
    """The decoded object of an STG-NF JSON file."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data
