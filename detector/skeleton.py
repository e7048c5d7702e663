"""The COCO-17 skeleton: keypoint names, limb pairs and left/right flip pairs.

The order is the one of COCO, AlphaPose and Ultralytics YOLO-pose alike.

Example:
    >>> KEYPOINT_NAMES[11], NUM_KEYPOINTS
    ('left_hip', 17)
    >>> FLIP_INDEX[5], FLIP_INDEX[6]
    (6, 5)
"""

from __future__ import annotations

from typing import Final

KEYPOINT_NAMES: Final[tuple[str, ...]] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS: Final[int] = len(KEYPOINT_NAMES)
KEYPOINT_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

#: Limbs drawn between keypoints (COCO's 19 skeleton edges, zero-based).
LIMBS: Final[tuple[tuple[int, int], ...]] = (
    (15, 13),
    (13, 11),
    (16, 14),
    (14, 12),
    (11, 12),
    (5, 11),
    (6, 12),
    (5, 6),
    (5, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (1, 2),
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
)

#: Pairs of keypoints that swap under a horizontal flip.
FLIP_PAIRS: Final[tuple[tuple[int, int], ...]] = (
    (1, 2),
    (3, 4),
    (5, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
)


def _flip_index() -> tuple[int, ...]:
    index = list(range(NUM_KEYPOINTS))
    for a, b in FLIP_PAIRS:
        index[a], index[b] = b, a
    return tuple(index)


#: ``keypoints[FLIP_INDEX]`` re-orders keypoints for a horizontally flipped image.
FLIP_INDEX: Final[tuple[int, ...]] = _flip_index()

#: Keypoint groups used to report which body parts moved unexpectedly.
BODY_PARTS: Final[dict[str, tuple[int, ...]]] = {
    "head": (0, 1, 2, 3, 4),
    "left_arm": (5, 7, 9),
    "right_arm": (6, 8, 10),
    "torso": (5, 6, 11, 12),
    "left_leg": (11, 13, 15),
    "right_leg": (12, 14, 16),
}
