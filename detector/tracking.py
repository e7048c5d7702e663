"""Per-camera person tracking with Ultralytics' ByteTrack (or BoT-SORT without ReID).

One tracker per camera, never shared: track ids are per camera. Detections of several
cameras come from one batched inference call; each camera's tracker then sees only its own.

Example:
    >>> TRACKERS
    ('bytetrack', 'botsort')
    >>> tracker = CameraTracker("gate")  # doctest: +SKIP
    >>> frame = tracker.update(detections, frame_index=0, timestamp=0.0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from detector.pose import Person, PoseFrame
from detector.pose_model import Detections

TrackerName = Literal["bytetrack", "botsort"]
#: Every tracker name, in :data:`TrackerName` order (for config and CLI choices).
TRACKERS: tuple[TrackerName, ...] = get_args(TrackerName)


def _tracker_args(
    name: TrackerName, track_buffer: int, high: float, low: float, match: float
) -> object:
    from ultralytics.cfg import get_cfg  # noqa: F401  (keeps Ultralytics' settings initialised)
    from ultralytics.utils import YAML, IterableSimpleNamespace
    from ultralytics.utils.checks import check_yaml

    cfg = YAML.load(check_yaml(f"{name}.yaml"))
    cfg["track_buffer"] = track_buffer
    cfg["track_high_thresh"] = high
    cfg["new_track_thresh"] = high
    cfg["track_low_thresh"] = low
    cfg["match_thresh"] = match
    # Fusing the detection score into the IoU cost pushes small, low-confidence walkers
    # under the match threshold: on vtest.avi 27 likely id switches with it, 7 without.
    cfg["fuse_score"] = False
    if name == "botsort":
        cfg["with_reid"] = False
        cfg["gmc_method"] = "none"
    return IterableSimpleNamespace(**cfg)


class CameraTracker:
    """Assigns stable per-camera ids to the people of successive frames of one camera.

    Arguments:
        camera: camera name (stamped on every PoseFrame).
        tracker: ``bytetrack`` (default) or ``botsort`` (without ReID).
        track_buffer: frames a lost track is kept for re-identification.
        high: detections above this start and extend tracks (first association stage).
        low: detections between ``low`` and ``high`` only extend existing tracks (ByteTrack's
            second stage); the detector must pass them through (its ``conf`` <= ``low``).
        match: association cost threshold (``1 - IoU``); 0.9 accepts IoU >= 0.1, which small
            people moving a few pixels per frame need.
    """

    def __init__(
        self,
        camera: str,
        tracker: TrackerName = "bytetrack",
        track_buffer: int = 60,
        high: float = 0.25,
        low: float = 0.1,
        match: float = 0.9,
    ):
        from ultralytics.trackers.bot_sort import BOTSORT
        from ultralytics.trackers.byte_tracker import BYTETracker

        self.camera = camera
        args = _tracker_args(tracker, track_buffer, high, low, match)
        self._tracker = BOTSORT(args=args) if tracker == "botsort" else BYTETracker(args=args)

    def reset(self) -> None:
        self._tracker.reset()

    def update(
        self, det: Detections, frame_index: int, timestamp: float, image: np.ndarray | None = None
    ) -> PoseFrame:
        """Track one frame's detections; returns the camera's PoseFrame (tracked persons only)."""
        persons: list[Person] = []
        # Every frame goes through the tracker, empty ones too: lost tracks age there.
        tracks = self._tracker.update(det.raw, image)
        for row in np.asarray(tracks).reshape(-1, 8):
            idx = int(row[7])
            if not 0 <= idx < len(det):
                continue
            persons.append(
                Person(
                    track_id=int(row[4]),
                    bbox=det.boxes[idx],
                    score=float(det.scores[idx]),
                    keypoints=det.keypoints[idx],
                )
            )
        return PoseFrame(
            camera=self.camera,
            frame_index=int(frame_index),
            timestamp=float(timestamp),
            image_size=det.image_size,
            persons=persons,
        )
