"""Labelled pose datasets on disk: clips with their person tracks and frame labels.

Two layouts are read:

- **AIHub2** (``../shared/data/aihub2``): ``pose/<split>/<clip>_alphapose_tracked_person.json``
  and ``gt/<clip>.npy`` (one 0/1 value per frame, for every split);
- **STG-NF** (ShanghaiTech, UBnormal pose folders): ``pose/<split>/<clip>*.json`` and
  ``gt/test_frame_mask/<clip>.npy``; the train split there has no labels (all normal).

Labels must cover every frame that has poses (:meth:`Clip.check_labels`; longer is fine);
:meth:`Clip.labelled_only` cuts a clip at its last labelled frame instead.

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
from detector.posefiles import MAX_CLIP_FRAMES, PoseFileError, read_stgnf

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
        label_path: the label file (None when unlabelled).
    """

    name: str
    path: Path
    tracks: dict[int, Track]
    labels: np.ndarray | None
    label_path: Path | None = None

    @property
    def posed_frames(self) -> int:
        """One past the last frame with a person in it (0 without persons)."""
        return max((int(t.frames[-1]) for t in self.tracks.values()), default=-1) + 1

    @property
    def num_frames(self) -> int:
        """Frames of the clip: the label length, or one past the last posed frame."""
        return max(self.posed_frames, 0 if self.labels is None else int(self.labels.shape[0]))

    def check_labels(self) -> None:
        """Raise :class:`DatasetError` when the labels stop before the poses do.

        Labels longer than the poses are fine (frames without persons are normal by the
        protocol); shorter ones would leave posed frames without a label, and counting them
        as normal silently changes every metric.
        """
        if self.labels is None or self.labels.shape[0] >= self.posed_frames:
            return
        n, posed = int(self.labels.shape[0]), self.posed_frames
        raise DatasetError(
            f"clip {self.name!r}: its labels ({self.label_path}) cover {n:,} frames (0 to "
            f"{n - 1:,}) but its poses ({self.path}) cover {posed:,} (0 to {posed - 1:,}); "
            "labels must cover every posed frame (longer labels are fine). Fix the label "
            "file, or score only the labelled frames (`posewatch evaluate --labelled-only`)"
        )

    def frame_labels(self) -> np.ndarray:
        """``(num_frames,)`` uint8 labels; unlabelled clips are all normal (0).

        Raises:
            DatasetError: the labels are shorter than the poses (:meth:`check_labels`).
        """
        self.check_labels()
        out = np.zeros(self.num_frames, np.uint8)
        if self.labels is not None:
            out[: self.labels.shape[0]] = self.labels
        return out

    def labelled_only(self) -> Clip:
        """This clip as if it ended at its last labelled frame: every track cut there (a
        track that starts after it is dropped). Scores of the frames kept are unchanged:
        a window is scored on its last frame from earlier frames only. Unlabelled clips are
        returned as they are."""
        if self.labels is None:
            return self
        n = int(self.labels.shape[0])
        tracks = {}
        for tid, tr in self.tracks.items():
            keep = np.flatnonzero(tr.present & (tr.frames < n))
            if keep.size:
                end = int(keep[-1]) + 1
                tracks[tid] = Track(
                    tid, tr.frames[:end], tr.keypoints[:end], tr.scores[:end], tr.present[:end]
                )
        return Clip(self.name, self.path, tracks, self.labels, self.label_path)


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


def _npy_values(path: Path) -> int:
    """Values a ``.npy`` file's header announces, checked against the file's size (so that
    loading never allocates more than the file holds)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        data_bytes = path.stat().st_size - fh.tell()
    n = int(np.prod(shape, dtype=object))
    if n > MAX_CLIP_FRAMES:
        raise ValueError(
            f"its header announces {n:,} labels, more than a clip may have frames "
            f"({MAX_CLIP_FRAMES:,})"
        )
    if n * dtype.itemsize > data_bytes:
        raise ValueError(
            f"its header announces {n:,} values of {dtype.itemsize} bytes but the file holds "
            f"{data_bytes:,} bytes of data"
        )
    return n


def load_labels(path: Path) -> np.ndarray:
    """Read a ``(N,)`` 0/1 label file; raises :class:`DatasetError` when it is not one (or
    holds more than :data:`~detector.posefiles.MAX_CLIP_FRAMES` values)."""
    try:
        _npy_values(path)
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
        yield Clip(name=name, path=path, tracks=tracks, labels=labels, label_path=label_path)


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
