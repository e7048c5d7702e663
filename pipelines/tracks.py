"""Bridge from the detector's pose data model to the forecaster's arrays."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from detector.datasets import Clip, load_split
from forecasting.train import TrackArrays


def clip_tracks(clips: Iterable[Clip], min_frames: int = 1) -> list[TrackArrays]:
    """One :class:`TrackArrays` per person track of the clips (shortest tracks dropped)."""
    out = []
    for clip in clips:
        labels = clip.frame_labels() if clip.labels is not None else None
        for tr in clip.tracks.values():
            if len(tr) < min_frames:
                continue
            out.append(TrackArrays(clip.name, tr.keypoints, tr.frames, labels))
    return out


def load_tracks(root: str | Path, split: str, min_frames: int = 1) -> list[TrackArrays]:
    """All person tracks of one split of a labelled dataset."""
    return clip_tracks(load_split(root, split), min_frames)
