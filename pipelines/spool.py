"""A durable, bounded, on-disk FIFO of keyed messages: the Kafka sink's write-ahead log.

Records are JSON lines in segment files (``<dir>/<seq>.log``); a cursor file
(``<dir>/cursor``, ``segment offset`` written atomically) marks what has been delivered.
Appends are flushed and fsync'd, so an alert accepted by :meth:`DiskSpool.append` survives a
crash or a restart of posewatch. When the spool exceeds ``max_bytes`` the oldest
undelivered segments are dropped and counted (the bound an operator configures).

Faults it survives:

- **A torn tail** (a crash, a power cut or a full disk in the middle of an append) is cut
  off when the spool opens and counted in :attr:`DiskSpool.torn`; a record is never
  appended onto torn bytes (a failed append truncates its own partial write).
- **A corrupt record** (not JSON, not base64) is skipped and counted in
  :attr:`DiskSpool.corrupt`, never fatal.
- **A full disk**: :meth:`DiskSpool.append` raises :class:`SpoolWriteError` and leaves the
  files as they were (the caller keeps the message elsewhere and retries); a cursor that
  cannot be written stays in memory and is written at the next ack.
- **Two processes on one folder**: the folder is locked (``fcntl.flock`` on ``<dir>/lock``,
  which holds the owner's pid and host); a second process gets :class:`SpoolLockedError`
  naming the process that holds it.

Example:
    >>> import tempfile
    >>> sp = DiskSpool(tempfile.mkdtemp())
    >>> sp.append("gate", b'{"a": 1}'); sp.pending()
    1
    >>> [k for k, _ in sp.peek(10)], sp.ack(1), sp.pending()
    (['gate'], None, 0)
    >>> sp.close()
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: Locks this process holds: folder -> (lock file descriptor, users).
_HELD: dict[Path, tuple[int, int]] = {}
_HELD_LOCK = threading.Lock()


class SpoolWriteError(OSError):
    """A message could not be written to the spool (disk full, read-only, I/O error); the
    spool's files are unchanged."""


class SpoolLockedError(RuntimeError):
    """Another process uses the spool folder (the message names it and what to do)."""


def _lock_folder(folder: Path) -> None:
    """Take the folder's inter-process lock (re-entrant within this process)."""
    key = folder.resolve()
    with _HELD_LOCK:
        if key in _HELD:
            fd, users = _HELD[key]
            _HELD[key] = (fd, users + 1)
            return
        path = key / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SpoolLockedError(
                f"spool folder {key} is in use by {owner}: two processes on one spool would "
                "send the same alerts twice; give each process its own kafka.spool_dir (or "
                "stop the other one)"
            ) from None
        with contextlib.suppress(OSError):  # a full disk must not prevent the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _HELD[key] = (fd, 1)


def _unlock_folder(folder: Path) -> None:
    key = folder.resolve()
    with _HELD_LOCK:
        if key not in _HELD:
            return
        fd, users = _HELD[key]
        if users > 1:
            _HELD[key] = (fd, users - 1)
            return
        del _HELD[key]
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _decode(line: bytes) -> tuple[str, bytes] | None:
    """A record's key and value, or None when it is corrupt."""
    try:
        rec = json.loads(line)
        return str(rec["k"]), base64.b64decode(rec["v"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


class DiskSpool:
    """Append / peek / ack queue on disk.

    Arguments:
        folder: where segments and the cursor live (created).
        max_bytes: bound on the undelivered bytes; beyond it the oldest segments are dropped.
            Checked against the free space of the folder's file system when it opens (a
            warning when the bound cannot be reached: the disk fills first, and alerts then
            wait in the sink's memory backlog).
        segment_bytes: size at which a new segment starts.
        fsync: fsync every append (durability; turn off only for tests of throughput).

    Raises:
        SpoolLockedError: another process holds the folder.
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
        _lock_folder(self.folder)
        self._closed = False
        self.max_bytes = max_bytes
        self._check_free_space()
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.dropped = 0  # messages dropped by the size bound
        self.torn = 0  # torn tails cut off at open
        self.corrupt = 0  # corrupt records skipped
        self._lock = threading.Lock()
        self._cursor_path = self.folder / "cursor"
        self._seg, self._off = self._read_cursor()
        self._cursor_dirty = False
        self._repair()
        segs = self._segments()
        self._write_seq = segs[-1] if segs else self._seg
        self._count = sum(1 for _ in self._iter_from(self._seg, self._off))

    def close(self) -> None:
        """Release the folder's lock (the files stay)."""
        if not self._closed:
            self._closed = True
            _unlock_folder(self.folder)

    def _check_free_space(self) -> None:
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return
        if self.max_bytes > free:
            log.warning(
                "spool %s: kafka.spool_max_mb is %.1f MB but only %.1f MB are free there: the "
                "disk fills before the spool reaches its bound (free space or lower "
                "kafka.spool_max_mb)",
                self.folder,
                self.max_bytes / 2**20,
                free / 2**20,
            )

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
        """Persist the cursor; on a write error it stays in memory (written at the next
        ack; a restart before that re-sends some messages: at least once)."""
        tmp = self._cursor_path.with_suffix(".tmp")
        try:
            tmp.write_text(f"{self._seg} {self._off}")
            os.replace(tmp, self._cursor_path)
            self._cursor_dirty = False
        except OSError as exc:
            self._cursor_dirty = True
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.error("spool %s: cannot persist the delivery cursor (%s)", self.folder, exc)

    def _repair(self) -> None:
        """Cut a torn tail (bytes after the last newline) off every segment."""
        for s in self._segments():
            path = self._path(s)
            with open(path, "rb") as fh:
                data = fh.read()
            if not data or data.endswith(b"\n"):
                continue
            keep = data.rfind(b"\n") + 1
            try:
                os.truncate(path, keep)
            except OSError as exc:
                log.error("spool %s: cannot cut the torn tail of %s (%s)", self.folder, path, exc)
                continue
            self.torn += 1
            log.warning(
                "spool %s: cut a torn record (%d bytes) off the end of %s (a crash or a full "
                "disk during an append); the messages before it are kept",
                self.folder,
                len(data) - keep,
                path.name,
            )
        if self._seg in self._segments() and self._off > self._path(self._seg).stat().st_size:
            self._off = self._path(self._seg).stat().st_size

    def _iter_from(
        self, seg: int, off: int, limit: int | None = None
    ) -> Iterator[tuple[int, int, bytes]]:
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
                        break  # a tail being written or torn after open: never read
                    yield s, fh.tell(), line
                    n += 1
                    if limit is not None and n >= limit:
                        return

    # -- API --------------------------------------------------------------------------------
    def append(self, key: str, value: bytes) -> None:
        """Durably add one message.

        Raises:
            SpoolWriteError: it could not be written (disk full, I/O error); the spool is
                unchanged.
        """
        rec = json.dumps({"k": key, "v": base64.b64encode(value).decode()}).encode() + b"\n"
        with self._lock:
            path = self._path(self._write_seq)
            size = path.stat().st_size if path.exists() else 0
            if size and size + len(rec) > self.segment_bytes:
                self._write_seq += 1
                path, size = self._path(self._write_seq), 0
            try:
                with open(path, "ab") as fh:
                    fh.write(rec)
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
            except OSError as exc:
                self._undo_append(path, size)
                raise SpoolWriteError(exc.errno, f"spool {self.folder}: {exc.strerror}") from exc
            self._count += 1
            if self._cursor_dirty:
                self._write_cursor()
            self._enforce_bound()

    def _undo_append(self, path: Path, size: int) -> None:
        """Remove a partial write (never leave torn bytes for the next append)."""
        try:
            if size == 0:
                path.unlink(missing_ok=True)
            elif path.exists():
                os.truncate(path, size)
        except OSError as exc:  # the next open cuts the torn tail
            log.error("spool %s: cannot undo a partial append (%s)", self.folder, exc)

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
        """Up to ``n`` undelivered messages, oldest first (not removed). Corrupt records are
        acknowledged and counted (:attr:`corrupt`), never returned."""
        return self.peek_batch(n)[0]

    def peek_batch(self, n: int) -> tuple[list[tuple[str, bytes]], tuple[int, int]]:
        """:meth:`peek`, plus the position just after the last message returned (give it
        to :meth:`ack` so that a bound enforced meanwhile cannot shift what is acked)."""
        with self._lock:
            out: list[tuple[str, bytes]] = []
            end = (self._seg, self._off)
            for seg, off, line in self._iter_from(self._seg, self._off):
                rec = _decode(line)
                if rec is None:
                    if not out:  # at the head: skip it for good
                        self.corrupt += 1
                        self._count -= 1
                        self._seg, self._off = seg, off
                        end = (seg, off)
                        self._write_cursor()
                        log.error("spool %s: skipped a corrupt record", self.folder)
                        continue
                    break  # handled when it reaches the head
                out.append(rec)
                end = (seg, off)
                if len(out) >= n:
                    break
            return out, end

    def ack(self, n: int, end: tuple[int, int] | None = None) -> None:
        """Mark the ``n`` oldest undelivered messages delivered (persisted). With ``end``
        (from :meth:`peek_batch`) the cursor moves to that position: when the size bound
        dropped segments meanwhile, only what is still there is acknowledged."""
        if n <= 0:
            return
        with self._lock:
            if end is None:
                last = None
                for rec in self._iter_from(self._seg, self._off, n):
                    last = rec
                if last is None:
                    return
                end = (last[0], last[1])
            if end <= (self._seg, self._off):
                return  # dropped by the bound meanwhile (counted there)
            dropped_meanwhile = end[0] < self._seg or not self._path(end[0]).exists()
            self._seg, self._off = end
            if dropped_meanwhile:  # recount what is left rather than trust n
                self._count = sum(1 for _ in self._iter_from(self._seg, self._off))
            else:
                self._count -= n
            self._write_cursor()
            for s in self._segments():
                if s < end[0]:
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
            with contextlib.suppress(FileNotFoundError):
                size = self._path(s).stat().st_size
                total += size - (self._off if s == self._seg else 0)
        return total


__all__ = ["DiskSpool", "SpoolLockedError", "SpoolWriteError"]
