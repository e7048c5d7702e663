"""Turning videos into pose files: ``posewatch extract VIDEO... --out DIR``.

Each video is read as fast as possible (no frame dropped), batched through YOLO-pose,
tracked, and written as an STG-NF JSON pose file (or JSON lines of PoseFrames), so a user's
own footage becomes a training set for ``posewatch train``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from detector.muxer import FrameMuxer
from detector.pose import PoseFrame, tracks_from_frames
from detector.posefiles import write_jsonl, write_stgnf
from detector.sources import CameraSource, Frame, SourceConfig, SourceError, SourceStatus
from detector.stage import DetectStage, Predictor
from detector.tracking import TrackerName


@dataclass(slots=True)
class ExtractSummary:
    """What extracting one video produced."""

    video: str
    out: str
    frames: int
    seconds: float
    fps: float
    persons_per_frame: float
    tracks: int
    long_tracks: int


def track_video(
    model: Predictor,
    video: str | Path,
    camera: str = "video",
    batch_size: int = 4,
    tracker: TrackerName = "bytetrack",
    on_frame: Callable[[Frame, PoseFrame], None] | None = None,
) -> Iterator[PoseFrame]:
    """Yield one tracked :class:`PoseFrame` per frame of a video file, in order.

    Frames are read as fast as they are consumed (none dropped) and go through a
    :class:`~detector.stage.DetectStage` (no ROI) in batches of up to ``batch_size``.

    Arguments:
        model: the pose model (a :class:`~detector.pose_model.PoseModel` or any
            :class:`~detector.stage.Predictor`).
        video: path of the video file.
        camera: camera name stamped on every PoseFrame.
        batch_size: most frames per inference call.
        tracker: ``bytetrack`` or ``botsort``.
        on_frame: called with each decoded frame and its PoseFrame before it is yielded.

    Raises:
        SourceError: the file is missing, not a video, or ends early (truncated); raised
            after the frames read before the problem were yielded.
    """
    src = CameraSource(camera, SourceConfig(uri=str(video), queue_size=2 * batch_size)).start()
    mux = FrameMuxer([src], batch_size=batch_size, timeout=0.05)
    stage = DetectStage(model, tracker)
    try:
        while True:
            batch = mux.next_batch()
            if not batch:
                if src.done or src.status == SourceStatus.OFFLINE:
                    break
                continue
            for d in stage.process(batch):
                if on_frame is not None:
                    on_frame(d.frame, d.poses)
                yield d.poses
    finally:
        src.stop()
    if src.error:
        raise SourceError(src.error)


def extract_video(
    model: Predictor,
    video: str | Path,
    out_dir: str | Path,
    fmt: Literal["stgnf", "jsonl"] = "stgnf",
    batch_size: int = 4,
    progress: bool = True,
    tracker: TrackerName = "bytetrack",
) -> ExtractSummary:
    """Extract tracked poses of one video into ``out_dir``; returns a summary."""
    from tqdm import tqdm

    video = Path(video)
    out_dir = Path(out_dir)
    name = video.stem
    frames: list[PoseFrame] = []
    t0 = time.perf_counter()
    import cv2

    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    cap.release()
    with tqdm(total=total, disable=not progress, unit="frame", desc=name) as bar:
        for pf in track_video(model, video, name, batch_size, tracker):
            frames.append(pf)
            bar.update(1)
            bar.set_postfix(persons=len(pf.persons))
    secs = time.perf_counter() - t0
    if fmt == "jsonl":
        out = out_dir / f"{name}.jsonl"
        write_jsonl(out, frames)
    else:
        out = out_dir / f"{name}_alphapose_tracked_person.json"
        write_stgnf(out, tracks_from_frames(frames))
    tracks = tracks_from_frames(frames)
    n = len(frames)
    return ExtractSummary(
        video=str(video),
        out=str(out),
        frames=n,
        seconds=secs,
        fps=n / secs if secs > 0 else float("nan"),
        persons_per_frame=sum(len(f.persons) for f in frames) / max(n, 1),
        tracks=len(tracks),
        long_tracks=sum(1 for t in tracks.values() if t.num_present > 200),
    )
