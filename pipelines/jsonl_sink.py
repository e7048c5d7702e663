"""Alerts as JSON lines in a file (one alert per line, flushed as written)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from pipelines.alerts import Alert


class JsonlAlertSink:
    """Appends alerts to ``path`` (created with its folder); ``count`` says how many."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open)
        self.count = 0

    def write(self, alert: Alert) -> None:
        self._fh.write(alert.model_dump_json())
        self._fh.write("\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        self._fh.close()
