"""A durable, bounded, on-disk FIFO of keyed messages: the Kafka sink's write-ahead log.

Records are JSON lines in segment files (``<dir>/<seq>.log``); a cursor file
(``<dir>/cursor``, ``segment offset`` written atomically) marks what has been delivered.
Appends are flushed and fsync'd, so an alert accepted by :meth:`DiskSpool.append` survives a
crash or a restart of posewatch. When the spool exceeds ``max_bytes`` the oldest
undelivered segments are dropped and counted (the bound an operator configures).

Example:
    >>> import tempfile
    >>> sp = DiskSpool(tempfile.mkdtemp())
    >>> sp.append("gate", b'{"a": 1}'); sp.pending()
    1
    >>> [k for k, _ in sp.peek(10)], sp.ack(1), sp.pending()
    (['gate'], None, 0)
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path


class DiskSpool:
    """Append / peek / ack queue on disk.

    Arguments:
        folder: where segments and the cursor live (created).
        max_bytes: bound on the undelivered bytes; beyond it the oldest segments are dropped.
        segment_bytes: size at which a new segment starts.
        fsync: fsync every append (durability; turn off only for tests of throughput).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        max_bytes: int = 256 << 20,
        segment_bytes: int = 4 << 20,
        fsync: bool = True,
    ):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped = 0
        self._lock = threading.Lock()
        self._cursor_path = self.folder / "cursor"
        self._seg, self._off = self._read_cursor()
        segs = self._segments()
        self._write_seq = segs[-1] if segs else self._seg
        self._count = sum(1 for _ in self._iter_from(self._seg, self._off))

    # -- files ------------------------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.log") if p.stem.isdigit())

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:012d}.log"

    def _read_cursor(self) -> tuple[int, int]:
        try:
            seg, off = self._cursor_path.read_text().split()
            return int(seg), int(off)
        except (OSError, ValueError):
            segs = self._segments()
            return (segs[0] if segs else 0), 0

    def _write_cursor(self) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(f"{self._seg} {self._off}")
        os.replace(tmp, self._cursor_path)

    def _iter_from(self, seg: int, off: int, limit: int | None = None):  # type: ignore[no-untyped-def]
        n = 0
        for s in self._segments():
            if s < seg:
                continue
            with open(self._path(s), "rb") as fh:
                if s == seg:
                    fh.seek(off)
                while True:
                    line = fh.readline()
                    if not line:
                        break
                    if not line.endswith(b"\n"):
                        break  # a torn last write (crash mid-append): ignored
                    yield s, fh.tell(), line
                    n += 1
                    if limit is not None and n >= limit:
                        return

    # -- API --------------------------------------------------------------------------------
    def append(self, key: str, value: bytes) -> None:
        """Durably add one message."""
        rec = json.dumps({"k": key, "v": base64.b64encode(value).decode()}).encode() + b"\n"
        with self._lock:
            path = self._path(self._write_seq)
            if path.exists() and path.stat().st_size + len(rec) > self.segment_bytes:
                self._write_seq += 1
                path = self._path(self._write_seq)
            with open(path, "ab") as fh:
                fh.write(rec)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            self._count += 1
            self._enforce_bound()

    def _enforce_bound(self) -> None:
        while self.size_bytes() > self.max_bytes:
            segs = [s for s in self._segments() if s >= self._seg]
            if len(segs) <= 1:
                break  # never drop the segment being written
            oldest = segs[0]
            lost = sum(
                1
                for _ in self._iter_from(oldest, self._off if oldest == self._seg else 0)
                if _[0] == oldest
            )
            self._path(oldest).unlink()
            self.dropped += lost
            self._count -= lost
            self._seg, self._off = segs[1], 0
            self._write_cursor()

    def peek(self, n: int) -> list[tuple[str, bytes]]:
        """Up to ``n`` undelivered messages, oldest first (not removed)."""
        with self._lock:
            out = []
            for _, _, line in self._iter_from(self._seg, self._off, n):
                rec = json.loads(line)
                out.append((rec["k"], base64.b64decode(rec["v"])))
            return out

    def ack(self, n: int) -> None:
        """Mark the ``n`` oldest undelivered messages delivered (persisted)."""
        if n <= 0:
            return
        with self._lock:
            last = None
            for rec in self._iter_from(self._seg, self._off, n):
                last = rec
            if last is None:
                return
            seg, off, _ = last
            self._seg, self._off = seg, off
            self._count -= n
            self._write_cursor()
            for s in self._segments():
                if s < seg:
                    self._path(s).unlink(missing_ok=True)

    def pending(self) -> int:
        """Undelivered messages."""
        return self._count

    def size_bytes(self) -> int:
        """Bytes of undelivered data on disk (approximately: whole segments minus the cursor)."""
        total = 0
        for s in self._segments():
            if s < self._seg:
                continue
            size = self._path(s).stat().st_size
            total += size - (self._off if s == self._seg else 0)
        return total
