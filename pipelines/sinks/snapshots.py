"""One JPEG per ``new`` alert (``outputs.snapshots``): the frame with the alerting person's
skeleton, box and score bar; in split mode (``posewatch score``, no image) the skeleton is
drawn from the alert's keypoints on a blank canvas of the frame's size.

Files are ``<folder>/<camera>-<alert id>.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.pose import Person
from pipelines.alerts import Alert
from pipelines.annotate import blank_canvas, snapshot_jpeg
from pipelines.sinks.base import AlertSink, FrameView


class SnapshotSink(AlertSink):
    """Writes a snapshot per ``new`` alert into ``folder``."""

    name = "snapshots"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.count = 0

    def path_of(self, alert: Alert) -> Path:
        return self.folder / f"{alert.camera}-{alert.alert_id}.jpg"

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        if alert.type != "new":
            return
        person = None
        if view is not None:
            person = next((p for p in view.persons if p.track_id == alert.track_id), None)
        if person is None:  # no live person: the alert's own pose
            kp = np.asarray(alert.keypoints, np.float32)
            kp[kp[:, 2] <= 0, :2] = np.nan
            person = Person(alert.track_id, np.asarray(alert.bbox, np.float32), 1.0, kp)
        canvas = view.canvas() if view is not None else _blank(alert)
        path = self.path_of(alert)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(snapshot_jpeg(canvas, person, alert.score, alert.threshold))
        tmp.replace(path)
        self.count += 1


def _blank(alert: Alert) -> np.ndarray:
    """A dark canvas that holds the alert's box (no frame size is known)."""
    w = max(64, int(np.ceil(max(alert.bbox[2], 1.0))) + 16)
    h = max(64, int(np.ceil(max(alert.bbox[3], 1.0))) + 16)
    return blank_canvas(w, h)


__all__ = ["SnapshotSink"]
