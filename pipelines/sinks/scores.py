"""Every person score as a JSON line (``outputs.scores_jsonl``): camera, track, frame, raw
and smoothed score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from pipelines.sinks.base import AlertSink, FrameView


class ScoresJsonlSink(AlertSink):
    """Appends one line per scored person to ``path``."""

    name = "scores"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def frame(self, view: FrameView) -> None:
        cam = json.dumps(view.camera)
        for s in view.scores:
            self._fh.write(
                f'{{"camera":{cam},"track_id":{s.track_id},"frame_index":{s.frame_index},'
                f'"score":{s.score:.6g},"smoothed":{s.smoothed:.6g}}}\n'
            )

    def flush(self, timeout: float = 10.0) -> bool:
        self._fh.flush()
        return True

    def close(self, timeout: float = 10.0) -> bool:
        self._fh.close()
        return True


__all__ = ["ScoresJsonlSink"]
