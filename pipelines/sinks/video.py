"""One annotated MP4 per camera (``outputs.annotated_video``): skeletons, track ids, score
bars and a red box while a person is alerting; in split mode (``posewatch score``, no image)
drawn on a blank canvas of the frame's size."""

from __future__ import annotations

from pathlib import Path

from pipelines.annotate import AnnotatedVideoWriter, draw_persons
from pipelines.sinks.base import AlertSink, FrameView


class AnnotatedVideoSink(AlertSink):
    """Writes every scored frame of every camera to ``<folder>/<camera>.mp4``."""

    name = "video"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.writers: dict[str, AnnotatedVideoWriter] = {}

    def frame(self, view: FrameView) -> None:
        w = self.writers.get(view.camera)
        if w is None:
            w = self.writers[view.camera] = AnnotatedVideoWriter(
                self.folder / f"{view.camera}.mp4", view.fps or 10.0
            )
        thr = view.threshold if view.threshold is not None else float("nan")
        w.write(draw_persons(view.canvas(), view.persons, view.smoothed(), thr, view.alerting))

    def close(self, timeout: float = 10.0) -> bool:
        for w in self.writers.values():
            w.close()
        return True

    @property
    def paths(self) -> list[str]:
        return [str(w.path) for w in self.writers.values()]


__all__ = ["AnnotatedVideoSink"]
