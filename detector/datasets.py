"""Labelled pose datasets on disk: clips with their person tracks and frame labels.

Two layouts are read:

- **AIHub2** (``../shared/data/aihub2``): ``pose/<split>/<clip>_alphapose_tracked_person.json``
  and ``gt/<clip>.npy`` (one 0/1 value per frame, for every split);
- **STG-NF** (ShanghaiTech, UBnormal pose folders): ``pose/<split>/<clip>*.json`` and
  ``gt/test_frame_mask/<clip>.npy``; the train split there has no labels (all normal).

Example:
    >>> from pathlib import Path
    >>> root = Path("../shared/data/aihub2")
    >>> clips = load_split(root, "test") if root.exists() else []
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.pose import Track
from detector.posefiles import PoseFileError, read_stgnf

POSE_SUFFIXES = ("_alphapose_tracked_person.json", "_alphapose_tracked_person.json.gz")


class DatasetError(ValueError):
    """A dataset folder does not have the expected layout; the message says what to fix."""


@dataclass(slots=True)
class Clip:
    """One video's poses and labels.

    Attributes:
        name: clip name (pose file name without the AlphaPose suffix).
        path: the pose file.
        tracks: ``{person_id: Track}``.
        labels: ``(N,)`` uint8 per-frame labels (1 = anomalous), or None when the split is
            unlabelled (e.g. STG-NF train splits, which are all normal).
    """

    name: str
    path: Path
    tracks: dict[int, Track]
    labels: np.ndarray | None

    @property
    def num_frames(self) -> int:
        """Frames of the clip: the label length, or one past the last posed frame."""
        last = max((int(t.frames[-1]) for t in self.tracks.values()), default=-1)
        return max(last + 1, 0 if self.labels is None else int(self.labels.shape[0]))

    def frame_labels(self) -> np.ndarray:
        """``(num_frames,)`` uint8 labels; unlabelled clips are all normal (0)."""
        out = np.zeros(self.num_frames, np.uint8)
        if self.labels is not None:
            out[: self.labels.shape[0]] = self.labels
        return out


@dataclass(frozen=True, slots=True)
class SplitSummary:
    """Counts of one split (what ``posewatch data summary`` prints)."""

    split: str
    clips: int
    tracks: int
    person_frames: int
    label_frames: int
    anomalous_fraction: float


def clip_name(pose_file: Path) -> str:
    """Clip name of a pose file: the file name without the AlphaPose/JSON suffix."""
    name = pose_file.name
    for suffix in (*POSE_SUFFIXES, ".json.gz", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def pose_files(root: Path, split: str) -> list[Path]:
    """Pose files of ``root/pose/<split>``, sorted by name."""
    folder = root / "pose" / split
    if not folder.is_dir():
        have = sorted(p.name for p in (root / "pose").iterdir()) if (root / "pose").is_dir() else []
        raise DatasetError(
            f"{folder}: no such split folder (expected <root>/pose/<split>/*.json; "
            f"splits here: {have or 'none'})"
        )
    files = sorted(
        p for p in folder.iterdir() if p.name.endswith(".json") or p.name.endswith(".json.gz")
    )
    if not files:
        raise DatasetError(f"{folder}: no pose files (*.json, *.json.gz)")
    return files


def _label_path(root: Path, name: str) -> Path | None:
    for cand in (root / "gt" / f"{name}.npy", root / "gt" / "test_frame_mask" / f"{name}.npy"):
        if cand.exists():
            return cand
    return None


def load_labels(path: Path) -> np.ndarray:
    """Read a ``(N,)`` 0/1 label file; raises :class:`DatasetError` when it is not one."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read labels ({exc}); truncated?") from exc
    arr = np.asarray(arr).reshape(-1)
    if arr.size == 0:
        raise DatasetError(f"{path}: label file is empty")
    if not np.isin(arr, (0, 1)).all():
        raise DatasetError(f"{path}: labels must be 0 or 1 per frame")
    return arr.astype(np.uint8)


def iter_split(root: str | Path, split: str, require_labels: bool | None = None) -> Iterator[Clip]:
    """Yield the clips of one split, one at a time.

    Arguments:
        root: dataset folder holding ``pose/`` and ``gt/``.
        split: ``train`` or ``test`` (any folder under ``pose/``).
        require_labels: raise when a clip has no label file. Default: required unless the
            layout is STG-NF's (``gt/test_frame_mask``) and the split is not ``test``.

    Raises:
        DatasetError: bad layout or labels; PoseFileError: a malformed pose file.
    """
    root = Path(root)
    if require_labels is None:
        require_labels = not ((root / "gt" / "test_frame_mask").is_dir() and split != "test")
    for path in pose_files(root, split):
        name = clip_name(path)
        tracks = read_stgnf(path)
        label_path = _label_path(root, name)
        labels = None
        if label_path is not None:
            labels = load_labels(label_path)
        elif require_labels:
            raise DatasetError(
                f"{path}: no label file for clip {name!r} "
                f"(looked for gt/{name}.npy and gt/test_frame_mask/{name}.npy)"
            )
        yield Clip(name=name, path=path, tracks=tracks, labels=labels)


def load_split(root: str | Path, split: str, require_labels: bool | None = None) -> list[Clip]:
    """All clips of one split (see :func:`iter_split`)."""
    return list(iter_split(root, split, require_labels))


def summarize(split: str, clips: list[Clip]) -> SplitSummary:
    """Counts of a split: clips, person tracks, person-frames, label frames, anomalous share."""
    label_frames = sum(int(c.labels.shape[0]) for c in clips if c.labels is not None)
    anomalous = sum(int(c.labels.sum()) for c in clips if c.labels is not None)
    return SplitSummary(
        split=split,
        clips=len(clips),
        tracks=sum(len(c.tracks) for c in clips),
        person_frames=sum(t.num_present for c in clips for t in c.tracks.values()),
        label_frames=label_frames,
        anomalous_fraction=anomalous / label_frames if label_frames else 0.0,
    )


def splits(root: str | Path) -> list[str]:
    """Split folders under ``root/pose`` (train first, then test, then the rest)."""
    pose = Path(root) / "pose"
    if not pose.is_dir():
        raise DatasetError(f"{root}: not a pose dataset (no pose/ folder with split folders)")
    names = sorted(p.name for p in pose.iterdir() if p.is_dir())
    order = {"train": 0, "test": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), n))


__all__ = [
    "Clip",
    "DatasetError",
    "PoseFileError",
    "SplitSummary",
    "clip_name",
    "iter_split",
    "load_labels",
    "load_split",
    "pose_files",
    "splits",
    "summarize",
]
