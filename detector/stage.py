"""The detect stage: batched pose model -> per-camera tracker -> ROI filter.

Every pipeline that turns camera frames into tracked poses (the live service, the detect
service, ``posewatch extract``) runs this one stage: a batch of frames from any cameras
(e.g. a :class:`~detector.muxer.FrameMuxer` batch) goes through one inference call, each
camera's tracker (created on its first frame, never shared) then sees only its own frames,
and persons whose box centre lies outside the camera's region of interest are dropped. The
stage keeps no metrics; callers observe the :class:`DetectedFrame` it returns.

Example:
    >>> inside_roi(np.array([10.0, 10.0, 30.0, 50.0]), (0, 0, 100, 100))
    True
    >>> stage = DetectStage(PoseModel(), rois={"gate": (0, 0, 640, 480)})  # doctest: +SKIP
    >>> for d in stage.process(mux.next_batch()):  # doctest: +SKIP
    ...     print(d.frame.camera, d.frame.index, len(d.poses.persons), d.detect_s)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from detector.pose import MAX_FPS, MIN_FPS, PoseFrame
from detector.pose_model import Detections
from detector.sources import Frame
from detector.tracking import CameraTracker, TrackerName

#: A region of interest: ``(x1, y1, x2, y2)`` pixels, corners included.
ROI = tuple[int, int, int, int]


class Predictor(Protocol):
    """Batched person-pose detection (:class:`~detector.pose_model.PoseModel` is one)."""

    def predict(self, frames: Sequence[np.ndarray], /) -> list[Detections]:
        """One :class:`Detections` per ``(H, W, 3)`` uint8 BGR frame, in order."""
        ...


class FrameTracker(Protocol):
    """One camera's tracker (:class:`~detector.tracking.CameraTracker` is one)."""

    def update(
        self, det: Detections, frame_index: int, timestamp: float, image: np.ndarray | None = None
    ) -> PoseFrame:
        """Track one frame's detections; the camera's :class:`PoseFrame` of tracked persons."""
        ...

    def reset(self) -> None:
        """Forget every track."""
        ...


def inside_roi(bbox: np.ndarray, roi: ROI) -> bool:
    """Whether the centre of ``bbox`` lies inside ``roi`` (its edges count as inside).

    Arguments:
        bbox: ``(4,)`` ``x1, y1, x2, y2`` pixels.
        roi: ``(x1, y1, x2, y2)`` pixels.

    Example:
        >>> inside_roi(np.array([90.0, 0.0, 130.0, 40.0]), (0, 0, 100, 100))  # centre x 110
        False
    """
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    return bool(roi[0] <= cx <= roi[2] and roi[1] <= cy <= roi[3])


@dataclass(slots=True)
class DetectedFrame:
    """One camera frame after detection, tracking and the ROI filter.

    Attributes:
        frame: the decoded frame (camera, index, timestamp, ``(H, W, 3)`` BGR image,
            ``read_at``, ``decode_s``).
        poses: the camera's tracked persons in the frame (only those inside its ROI).
        detect_s: inference seconds attributed to this frame (the batch's inference wall
            time divided by the batch length; tracking and the ROI filter not included).
    """

    frame: Frame
    poses: PoseFrame
    detect_s: float


class DetectStage:
    """Batched pose model -> per-camera tracker -> ROI filter.

    Arguments:
        model: the pose model (any :class:`Predictor`).
        tracker: tracker of every camera (``bytetrack`` or ``botsort``, see
            :data:`detector.tracking.TRACKERS`); ignored when ``tracker_factory`` is given.
        rois: region of interest per camera, ``(x1, y1, x2, y2)`` pixels; a camera not in it
            (or mapped to None) keeps every person.
        tracker_factory: builds the tracker of a camera from its name; default
            ``CameraTracker(camera, tracker)``.

    Attributes:
        rois: the regions of interest (a copy of ``rois``; may be changed between batches).
    """

    def __init__(
        self,
        model: Predictor,
        tracker: TrackerName = "bytetrack",
        rois: Mapping[str, ROI | None] | None = None,
        tracker_factory: Callable[[str], FrameTracker] | None = None,
    ):
        self.model = model
        self.tracker = tracker
        self.rois: dict[str, ROI | None] = dict(rois or {})
        self._factory = tracker_factory
        self._trackers: dict[str, FrameTracker] = {}

    @property
    def cameras(self) -> list[str]:
        """Cameras that have a tracker now, in order of their first frame."""
        return list(self._trackers)

    def tracker_of(self, camera: str) -> FrameTracker:
        """The camera's tracker, created on first use."""
        trk = self._trackers.get(camera)
        if trk is None:
            trk = (
                self._factory(camera)
                if self._factory is not None
                else CameraTracker(camera, self.tracker)
            )
            self._trackers[camera] = trk
        return trk

    def reset(self, camera: str) -> None:
        """Forget the camera's tracker (its next frame starts a new one, ids from scratch)."""
        self._trackers.pop(camera, None)

    def process(self, batch: Sequence[Frame]) -> list[DetectedFrame]:
        """Detect, track and filter one batch (frames of any cameras, each camera in order).

        Returns:
            one :class:`DetectedFrame` per frame, in batch order; ``[]`` for an empty batch
            (the model is not called).

        Raises:
            ValueError: the model returned a different number of detections than frames.
        """
        if not batch:
            return []
        t0 = time.perf_counter()
        dets = self.model.predict([f.image for f in batch])
        detect_s = (time.perf_counter() - t0) / len(batch)
        if len(dets) != len(batch):
            raise ValueError(f"the pose model returned {len(dets)} results for {len(batch)} frames")
        out: list[DetectedFrame] = []
        for f, det in zip(batch, dets, strict=True):
            pf = self.tracker_of(f.camera).update(det, f.index, f.timestamp, f.image)
            # scoring places frames by the camera's rate (one pose messages can carry)
            pf.fps = f.fps if MIN_FPS <= f.fps <= MAX_FPS else None
            roi = self.rois.get(f.camera)
            if roi is not None:
                pf.persons = [p for p in pf.persons if inside_roi(p.bbox, roi)]
            out.append(DetectedFrame(f, pf, detect_s))
        return out


__all__ = ["ROI", "DetectStage", "DetectedFrame", "FrameTracker", "Predictor", "inside_roi"]
