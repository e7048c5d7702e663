"""The pose data model: ``Person``, ``PoseFrame`` and the per-track array view ``Track``.

Conventions (everywhere in posewatch):

- keypoints are ``(17, 3)`` float32 rows of ``x, y, confidence`` in pixels of the source
  image, COCO-17 order (see :mod:`detector.skeleton`);
- a **missing keypoint** is ``x = y = NaN, confidence = 0``. Pose estimators write missing
  keypoints as ``(0, 0)`` (Ultralytics zeroes keypoints under its confidence threshold,
  AlphaPose files do the same); :func:`mark_missing` turns those into NaN, because (0, 0)
  is "not seen", not the image corner;
- a **missing frame** in a track (the person was not detected in that frame) is a row of
  ``Track`` whose ``present`` flag is False and whose keypoints are all missing.

Example:
    >>> import numpy as np
    >>> kp = np.zeros((17, 3), np.float32); kp[0] = (10, 20, 0.9)
    >>> p = Person(track_id=3, bbox=np.array([0, 0, 5, 5]), score=0.8, keypoints=kp)
    >>> int(p.visible.sum())
    1
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.skeleton import NUM_KEYPOINTS

SCHEMA_VERSION = 1
#: Camera names: what a configuration accepts and a pose message must carry (names become
#: metric labels and file names: letters, digits, ``_``, ``.``, ``-``; not ``.`` or ``..``).
CAMERA_NAME = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,64}")
#: Largest image side (pixels) a PoseFrame may state (sinks allocate canvases of that size).
MAX_IMAGE_SIDE = 16384
#: Largest frame index a PoseFrame may carry (10**12 - 1: over 1,000 years of a 30 fps
#: camera; a frame counter never reaches it, an epoch time in milliseconds already does).
MAX_FRAME_INDEX = 10**12 - 1
#: Frame rates a PoseFrame may state (frames/s, inclusive): time-lapse to high-speed cameras.
MIN_FPS, MAX_FPS = 0.1, 1000.0
#: Most frames one :class:`Track` may span, first to last (10**6: about 9 h 15 min at
#: 30 fps; a track's arrays take about 210 bytes per spanned frame, 210 MB at the limit).
MAX_TRACK_FRAMES = 10**6
#: Largest person / track id (2**53 - 1: every id is exact in JSON numbers and float64).
MAX_TRACK_ID = 2**53 - 1


def mark_missing(keypoints: np.ndarray) -> np.ndarray:
    """Return a float32 copy of ``keypoints`` with missing keypoints made explicit.

    Arguments:
        keypoints: ``(..., 17, 3)`` x, y, confidence. A keypoint at exactly (0, 0), or with a
            non-finite coordinate, is missing.

    Returns:
        ``(..., 17, 3)`` float32 where missing keypoints are ``(NaN, NaN, 0)``.
    """
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    xy = kp[..., :2]
    missing = ((xy[..., 0] == 0) & (xy[..., 1] == 0)) | ~np.isfinite(xy).all(axis=-1)
    kp[missing, 0] = np.nan
    kp[missing, 1] = np.nan
    kp[missing, 2] = 0.0
    return kp


def zero_missing(keypoints: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mark_missing` for writing files: missing keypoints become (0, 0, 0)."""
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    missing = ~np.isfinite(kp[..., :2]).all(axis=-1)
    kp[missing] = 0.0
    return kp


def bbox_from_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """The keypoints' extent ``x1, y1, x2, y2``; ``(0, 0, 0, 0)`` when none was seen (a box
    must be finite: a pose message with a NaN box is refused)."""
    xy = keypoints[:, :2]
    ok = np.isfinite(xy).all(axis=1)
    if not ok.any():
        return np.zeros(4, np.float32)
    lo = xy[ok].min(axis=0)
    hi = xy[ok].max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float32)


@dataclass(slots=True)
class Person:
    """One detected, tracked person in one frame.

    Attributes:
        track_id: per-camera track id (``-1`` when untracked).
        bbox: ``(4,)`` float32 ``x1, y1, x2, y2`` in pixels.
        score: detection confidence in [0, 1] (pose files may carry other scales).
        keypoints: ``(17, 3)`` float32 ``x, y, conf``; missing keypoints are ``(NaN, NaN, 0)``.
    """

    track_id: int
    bbox: np.ndarray
    score: float
    keypoints: np.ndarray

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32)
        if kp.shape != (NUM_KEYPOINTS, 3):
            raise ValueError(
                f"person {self.track_id}: keypoints must have shape (17, 3), got {kp.shape}"
            )
        self.keypoints = mark_missing(kp)
        box = np.asarray(self.bbox, dtype=np.float32).reshape(-1)
        if box.shape != (4,):
            raise ValueError(f"person {self.track_id}: bbox must have 4 values, got {box.shape}")
        self.bbox = box
        self.track_id = int(self.track_id)
        self.score = float(self.score)

    @property
    def visible(self) -> np.ndarray:
        """``(17,)`` bool: keypoints that were seen."""
        return np.isfinite(self.keypoints[:, 0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; missing keypoints are written as ``[0, 0, 0]``."""
        return {
            "track_id": self.track_id,
            "bbox": [float(v) for v in self.bbox],
            "score": self.score,
            "keypoints": zero_missing(self.keypoints).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Person:
        """Inverse of :meth:`to_dict`."""
        return cls(
            track_id=int(data["track_id"]),
            bbox=np.asarray(data["bbox"], np.float32),
            score=float(data["score"]),
            keypoints=np.asarray(data["keypoints"], np.float32),
        )


@dataclass(slots=True)
class PoseFrame:
    """Every person found in one frame of one camera.

    Attributes:
        camera: camera name.
        frame_index: index of the frame in the camera's stream, from 0.
        timestamp: capture time, seconds (UNIX time for live sources, ``index / fps`` for files).
        image_size: ``(width, height)`` in pixels.
        persons: the persons in the frame.
        fps: the camera's frame rate, frames/s (None: not known). Scoring places the frame
            on its model's time axis with it (:func:`forecasting.windows.model_frames`).
    """

    camera: str
    frame_index: int
    timestamp: float
    image_size: tuple[int, int]
    persons: list[Person] = field(default_factory=list)
    fps: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version`` (``fps`` only when known)."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "camera": self.camera,
            "frame_index": self.frame_index,
            "timestamp": self.timestamp,
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
            "persons": [p.to_dict() for p in self.persons],
        }
        if self.fps is not None:
            out["fps"] = float(self.fps)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoseFrame:
        """Inverse of :meth:`to_dict`. Raises ``KeyError`` / ``ValueError`` on bad input."""
        w, h = data["image_size"]
        fps = data.get("fps")
        return cls(
            camera=str(data["camera"]),
            frame_index=int(data["frame_index"]),
            timestamp=float(data["timestamp"]),
            image_size=(int(w), int(h)),
            persons=[Person.from_dict(p) for p in data["persons"]],
            fps=None if fps is None else float(fps),
        )


@dataclass(slots=True)
class Track:
    """One person's poses over time, as arrays, one row per frame from first to last seen.

    Attributes:
        track_id: the person's track id.
        frames: ``(T,)`` int64 consecutive frame indices ``first .. last``.
        keypoints: ``(T, 17, 3)`` float32; missing keypoints and missing frames are
            ``(NaN, NaN, 0)``.
        scores: ``(T,)`` float32 detection scores, NaN in missing frames.
        present: ``(T,)`` bool, whether the person was detected in that frame.
    """

    track_id: int
    frames: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def visible(self) -> np.ndarray:
        """``(T, 17)`` bool: keypoints seen in each frame."""
        return np.isfinite(self.keypoints[..., 0])

    @property
    def num_present(self) -> int:
        """Number of frames in which the person was detected."""
        return int(self.present.sum())

    @classmethod
    def from_rows(
        cls,
        track_id: int,
        rows: Mapping[int, tuple[np.ndarray, float]],
    ) -> Track:
        """Build a track from ``{frame_index: (keypoints (17, 3), score)}`` rows.

        Missing frames between the first and the last get ``present = False``.

        Raises:
            ValueError: no rows, or rows spanning more than :data:`MAX_TRACK_FRAMES` frames
                (the arrays are dense from the first frame to the last).
        """
        if not rows:
            raise ValueError(f"track {track_id}: no frames")
        first, last = min(rows), max(rows)
        T = last - first + 1
        if T > MAX_TRACK_FRAMES:
            raise ValueError(
                f"track {track_id} spans frames {first} to {last} ({T:,} frames); a track may "
                f"span at most {MAX_TRACK_FRAMES:,} frames: are the frame indices frame numbers?"
            )
        idx = np.array(sorted(rows), dtype=np.int64)
        kp = np.full((T, NUM_KEYPOINTS, 3), np.nan, np.float32)
        kp[..., 2] = 0.0
        scores = np.full(T, np.nan, np.float32)
        present = np.zeros(T, bool)
        for f in idx:
            k, s = rows[int(f)]
            kp[f - first] = mark_missing(k)
            scores[f - first] = s
            present[f - first] = True
        return cls(
            track_id=int(track_id),
            frames=np.arange(first, last + 1, dtype=np.int64),
            keypoints=kp,
            scores=scores,
            present=present,
        )

    def rows(self) -> dict[int, tuple[np.ndarray, float]]:
        """Inverse of :meth:`from_rows`: only the frames where the person is present."""
        return {
            int(f): (self.keypoints[i], float(self.scores[i]))
            for i, f in enumerate(self.frames)
            if self.present[i]
        }


def tracks_from_frames(frames: Iterable[PoseFrame]) -> dict[int, Track]:
    """Group the persons of a frame sequence (one camera) by track id.

    Arguments:
        frames: pose frames of one camera; persons with ``track_id < 0`` are skipped.

    Returns:
        ``{track_id: Track}``.
    """
    rows: dict[int, dict[int, tuple[np.ndarray, float]]] = {}
    for fr in frames:
        for p in fr.persons:
            if p.track_id < 0:
                continue
            rows.setdefault(p.track_id, {})[fr.frame_index] = (p.keypoints, p.score)
    return {tid: Track.from_rows(tid, r) for tid, r in sorted(rows.items())}


def frames_from_tracks(
    tracks: Mapping[int, Track],
    camera: str,
    image_size: tuple[int, int],
    fps: float = 30.0,
) -> list[PoseFrame]:
    """Turn tracks back into one :class:`PoseFrame` per frame index that has a person.

    Bounding boxes are the keypoints' extent (pose files carry no boxes).
    """
    by_frame: dict[int, list[Person]] = {}
    for tid, tr in tracks.items():
        for i, f in enumerate(tr.frames):
            if not tr.present[i]:
                continue
            kp = tr.keypoints[i]
            score = float(tr.scores[i])
            by_frame.setdefault(int(f), []).append(
                Person(
                    track_id=tid,
                    bbox=bbox_from_keypoints(kp),
                    score=0.0 if math.isnan(score) else score,
                    keypoints=kp,
                )
            )
    return [
        PoseFrame(
            camera=camera,
            frame_index=f,
            timestamp=f / fps,
            image_size=image_size,
            persons=by_frame[f],
        )
        for f in sorted(by_frame)
    ]
