"""Alerts as JSON lines in a file (``outputs.alerts_jsonl``; one alert per line, flushed as
written)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from pipelines.alerts import Alert
from pipelines.sinks.base import AlertSink, FrameView


class JsonlSink(AlertSink):
    """Appends alerts to ``path`` (created with its folder); ``count`` says how many."""

    name = "jsonl"
    required = True

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open)
        self.count = 0

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        self._fh.write(alert.model_dump_json())
        self._fh.write("\n")
        self._fh.flush()
        self.count += 1

    def close(self, timeout: float = 10.0) -> bool:
        self._fh.close()
        return True


__all__ = ["JsonlSink"]
