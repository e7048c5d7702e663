"""Turning videos into pose files: ``posewatch extract VIDEO... --out DIR``.

Each video is read as fast as possible (no frame dropped), batched through YOLO-pose,
tracked, and written as an STG-NF JSON pose file (or JSON lines of PoseFrames), so a user's
own footage becomes a training set for ``posewatch train``.

A video that ends early keeps the poses of every frame decoded: when its container is
whole (the header over-states the frame count) that is only a warning; when it is
truncated (or cannot be shown whole) the summary says it is incomplete
(:attr:`ExtractSummary.incomplete`, and ``posewatch extract`` exits with status 3).
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
from detector.sources import (
    CameraSource,
    FileSource,
    Frame,
    IncompleteVideoError,
    SourceConfig,
    SourceError,
    SourceStatus,
    stated_frame_count,
)
from detector.stage import DetectStage, Predictor
from detector.tracking import TrackerName


@dataclass(slots=True)
class ExtractSummary:
    """What extracting one video produced.

    Attributes:
        video: the video file.
        out: the pose file written.
        frames: frames decoded (and posed).
        seconds: wall time of the extraction, s.
        fps: frames processed per second of wall time.
        persons_per_frame: mean persons per frame.
        tracks: person tracks.
        long_tracks: tracks present in more than 200 frames.
        frames_claimed: frames the video's header claims (None: it states none).
        incomplete: why the video is incomplete (truncated; its poses are written all the
            same), None when it was read to its end.
    """

    video: str
    out: str
    frames: int
    seconds: float
    fps: float
    persons_per_frame: float
    tracks: int
    long_tracks: int
    frames_claimed: int | None = None
    incomplete: str | None = None


def track_video(
    model: Predictor,
    video: str | Path,
    camera: str = "video",
    batch_size: int = 4,
    tracker: TrackerName = "bytetrack",
    on_frame: Callable[[Frame, PoseFrame], None] | None = None,
    fps: float | None = None,
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
        fps: the video's frame rate (frames/s) for the timestamps; None: its header's (an
            implausible header rate is replaced and logged, see
            :meth:`~detector.sources.CameraSource.stats`).

    Raises:
        IncompleteVideoError: the file ends early and is truncated (or cannot be shown
            whole); raised after every decodable frame was yielded.
        SourceError: the file is not found or cannot be opened (not a video).
    """
    cfg = SourceConfig(uri=str(video), fps=fps, queue_size=2 * batch_size, max_retries=0)
    src = CameraSource(camera, cfg).start()
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
    if isinstance(src, FileSource) and src.incomplete is not None:
        raise IncompleteVideoError(src.error or "incomplete video", *src.incomplete)
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
    fps: float | None = None,
) -> ExtractSummary:
    """Extract tracked poses of one video into ``out_dir``; returns a summary.

    Writes ``<stem>_alphapose_tracked_person.json`` (``stgnf``) or ``<stem>.jsonl``.
    An incomplete video (see :func:`track_video`) is written too, with
    :attr:`ExtractSummary.incomplete` saying why.

    Raises:
        SourceError: the video is not found, cannot be opened, or no frame of it could be
            decoded.
    """
    from tqdm import tqdm

    video = Path(video)
    out_dir = Path(out_dir)
    name = video.stem
    frames: list[PoseFrame] = []
    t0 = time.perf_counter()
    import cv2

    cap = cv2.VideoCapture(str(video))
    total = stated_frame_count(str(video), cap) if cap.isOpened() else None
    cap.release()
    incomplete: IncompleteVideoError | None = None
    with tqdm(total=total, disable=not progress, unit="frame", desc=name) as bar:
        try:
            for pf in track_video(model, video, name, batch_size, tracker, fps=fps):
                frames.append(pf)
                bar.update(1)
                bar.set_postfix(persons=len(pf.persons))
        except IncompleteVideoError as exc:
            if not frames:
                raise
            incomplete = exc
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
        frames_claimed=total if incomplete is None else incomplete.frames_claimed,
        incomplete=None if incomplete is None else str(incomplete),
    )
