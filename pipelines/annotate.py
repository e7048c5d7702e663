"""Visual output: skeleton overlays, alert snapshots and annotated video.

Each person gets their skeleton (COCO limbs), track id and a score bar (green below the
threshold, red above); people in an open alert episode get a red box.

Example:
    >>> import numpy as np
    >>> img = np.zeros((100, 100, 3), np.uint8)
    >>> out = draw_persons(img, [], threshold=1.0)
    >>> out.shape
    (100, 100, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.pose import Person
from detector.skeleton import LIMBS

RED = (0, 0, 255)
GREEN = (0, 200, 0)
WHITE = (255, 255, 255)
YELLOW = (0, 220, 255)


def _pt(kp: np.ndarray, i: int) -> tuple[int, int] | None:
    x, y = kp[i, 0], kp[i, 1]
    if not (np.isfinite(x) and np.isfinite(y)):
        return None
    return round(float(x)), round(float(y))


#: Largest blank canvas drawn when a frame has no image (split mode, privacy mode): a pose
#: message may state any image size up to 16384 px; pictures of it are cut at 4K.
MAX_CANVAS = (3840, 2160)


def blank_canvas(width: float, height: float, value: int = 32) -> np.ndarray:
    """A dark ``(H, W, 3)`` uint8 canvas of the frame's size, at most :data:`MAX_CANVAS`
    (people beyond it are clipped by the drawing)."""
    w = min(max(1, int(width)), MAX_CANVAS[0])
    h = min(max(1, int(height)), MAX_CANVAS[1])
    return np.full((h, w, 3), value, np.uint8)


def draw_persons(
    image: np.ndarray,
    persons: Sequence[Person],
    scores: Mapping[int, float] | None = None,
    threshold: float | None = None,
    alerting: set[int] | None = None,
    score_range: tuple[float, float] = (-8.0, 8.0),
) -> np.ndarray:
    """A copy of ``image`` (BGR) with every person drawn.

    Arguments:
        image: ``(H, W, 3)`` uint8 BGR.
        persons: tracked persons of the frame.
        scores: smoothed score per track id (bar drawn when present).
        threshold: alert threshold (bar colour and tick).
        alerting: track ids in an open alert episode (red box).
        score_range: scores mapped to an empty / full bar.
    """
    out = image.copy()
    scores = scores or {}
    alerting = alerting or set()
    lo, hi = score_range
    for p in persons:
        kp = p.keypoints
        for a, b in LIMBS:
            pa, pb = _pt(kp, a), _pt(kp, b)
            if pa is not None and pb is not None:
                cv2.line(out, pa, pb, YELLOW, 2, cv2.LINE_AA)
        for i in range(kp.shape[0]):
            pi = _pt(kp, i)
            if pi is not None:
                cv2.circle(out, pi, 3, WHITE, -1, cv2.LINE_AA)
        x1, y1, x2, y2 = (int(v) for v in np.nan_to_num(p.bbox))
        if p.track_id in alerting:
            cv2.rectangle(out, (x1, y1), (x2, y2), RED, 3)
        cv2.putText(
            out,
            f"#{p.track_id}",
            (x1, max(12, y1 - 6)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            WHITE,
            1,
            cv2.LINE_AA,
        )
        s = scores.get(p.track_id)
        if s is not None and np.isfinite(s):
            width = max(20, x2 - x1)
            frac = float(np.clip((s - lo) / (hi - lo), 0.0, 1.0))
            above = threshold is not None and s > threshold
            y = min(out.shape[0] - 6, y2 + 4)
            cv2.rectangle(out, (x1, y), (x1 + width, y + 5), (60, 60, 60), -1)
            cv2.rectangle(
                out, (x1, y), (x1 + int(frac * width), y + 5), RED if above else GREEN, -1
            )
            if threshold is not None:
                tx = x1 + int(np.clip((threshold - lo) / (hi - lo), 0, 1) * width)
                cv2.line(out, (tx, y - 2), (tx, y + 7), WHITE, 1)
    return out


def snapshot_jpeg(
    image: np.ndarray, person: Person, score: float, threshold: float, quality: int = 90
) -> bytes:
    """JPEG bytes of the frame with the alerting person's skeleton and red box."""
    drawn = draw_persons(image, [person], {person.track_id: score}, threshold, {person.track_id})
    ok, buf = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the snapshot as JPEG")
    return bytes(buf)


class AnnotatedVideoWriter:
    """Writes annotated frames of one camera to an MP4 file (opened on the first frame).

    Arguments:
        path: output file (``.mp4``).
        fps: frame rate of the output.
    """

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.fps = fps if fps > 0 else 10.0
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self._writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
