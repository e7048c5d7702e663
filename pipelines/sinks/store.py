"""The alert history: every alert event and every operator verdict in SQLite
(``outputs.store``; the web view and ``posewatch alerts`` read it).

One row per episode (``alerts``: camera, person, times, peak score, threshold, model, the
flagged frame's keypoints, the operator's verdict), every message of it (``events``), its
score over time (``scores``: every scored frame of the person while it was open, and the
frames before ``new``, so the plot shows the rise), its picture (``snapshots``, JPEG) and
the verdicts given (``verdicts``, an audit trail; the episode row holds the latest).

Write-ahead logging (``journal_mode=WAL``, ``synchronous=NORMAL``): a writer never blocks
the page's readers, and a process killed mid-write (SIGKILL) leaves a consistent database
(committed transactions kept, the torn one rolled back at the next open). The schema is
versioned: ``schema_version`` holds one row per migration applied; opening a store applies
the missing ones in one transaction each, and refuses a store of a newer posewatch.

Example:
    >>> import tempfile, pathlib
    >>> db = AlertStore(pathlib.Path(tempfile.mkdtemp()) / "alerts.db")
    >>> db.version, db.count()
    (2, 0)
    >>> db.close()
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from detector.pose import Person
from pipelines.alerts import Alert, SnapshotRef, snapshot_file
from pipelines.annotate import blank_canvas, snapshot_jpeg
from pipelines.serving import RuntimeConfigError
from pipelines.sinks.base import AlertSink, FrameView

#: Verdicts an operator can give an episode.
VERDICTS = ("false_alert", "confirmed")
#: Longest note kept with a verdict (characters).
MAX_NOTE = 2000

#: Schema migrations, in order: migration ``i`` brings the store to version ``i + 1``. Add
#: new ones at the end (never edit a released one).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE alerts (
            alert_id TEXT PRIMARY KEY,
            camera TEXT NOT NULL,
            track_id INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            start_ts REAL NOT NULL,
            last_ts REAL NOT NULL,
            end_ts REAL,
            status TEXT NOT NULL CHECK (status IN ('open', 'ended')),
            frame_index INTEGER NOT NULL,
            score REAL NOT NULL,
            peak_score REAL NOT NULL,
            threshold REAL NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            model_id TEXT NOT NULL,
            top_joints TEXT NOT NULL,
            keypoints TEXT NOT NULL,
            bbox TEXT NOT NULL,
            image_width INTEGER,
            image_height INTEGER,
            verdict TEXT CHECK (verdict IN ('false_alert', 'confirmed')),
            verdict_note TEXT,
            verdict_at REAL
        )""",
        "CREATE INDEX alerts_created ON alerts (created_at)",
        "CREATE INDEX alerts_camera_created ON alerts (camera, created_at)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL REFERENCES alerts (alert_id),
            type TEXT NOT NULL,
            frame_index INTEGER NOT NULL,
            ts REAL NOT NULL,
            score REAL NOT NULL,
            produced_at REAL NOT NULL,
            message TEXT NOT NULL,
            UNIQUE (alert_id, type, frame_index)
        )""",
        """CREATE TABLE scores (
            alert_id TEXT NOT NULL REFERENCES alerts (alert_id),
            ts REAL NOT NULL,
            score REAL NOT NULL,
            PRIMARY KEY (alert_id, ts)
        ) WITHOUT ROWID""",
        """CREATE TABLE snapshots (
            alert_id TEXT PRIMARY KEY REFERENCES alerts (alert_id),
            jpeg BLOB NOT NULL,
            privacy INTEGER NOT NULL
        )""",
        """CREATE TABLE verdicts (
            id INTEGER PRIMARY KEY,
            alert_id TEXT NOT NULL REFERENCES alerts (alert_id),
            verdict TEXT NOT NULL,
            note TEXT NOT NULL,
            at REAL NOT NULL,
            source TEXT NOT NULL
        )""",
    ),
    (  # 2: the person's poses over each episode (and the window before it), so a verdict
        # can be re-scored by another model (calibration, cold start: pipelines/feedback.py)
        """CREATE TABLE poses (
            alert_id TEXT PRIMARY KEY REFERENCES alerts (alert_id),
            frames TEXT NOT NULL
        )""",
    ),
)
#: Frames of a person kept before an episode's ``new`` (a scoring window and some).
PRE_ROLL = 48
#: Most frames of one episode's poses kept.
MAX_EPISODE_FRAMES = 1200


def parse_time(value: str) -> float:
    """A time given by an operator: UNIX seconds, or ISO 8601 (``2026-11-30T14:05``; local
    time unless it names a zone).

    >>> parse_time("1700000000")
    1700000000.0
    >>> parse_time("2026-11-30T14:05:00+00:00")
    1796047500.0

    Raises:
        ValueError: neither (the message says what is accepted).
    """
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ValueError(
            f"{value[:40]!r} is not a time: give ISO 8601 (2026-11-30T14:05) or UNIX seconds"
        ) from None


class StoreError(RuntimeConfigError):
    """The alert store cannot be opened or used (the message names the file and what to
    do; a service that cannot open it exits 2 with that line)."""


#: Values of a stored pose row before the rate the frame stated: frame index, time, the box
#: ``x1, y1, x2, y2`` and the 17 keypoints' ``x, y, confidence`` (:meth:`AlertStore.add_poses`).
POSE_ROW = 6 + 17 * 3


@dataclass(slots=True)
class AlertRecord:
    """One episode as the store holds it (the latest of its messages, plus the verdict)."""

    alert_id: str
    camera: str
    track_id: int
    created_at: float  # UNIX time of the first message seen
    updated_at: float
    start_ts: float  # frame times (video time for files, UNIX time for live cameras)
    last_ts: float
    end_ts: float | None
    status: str  # open | ended
    frame_index: int  # the flagged frame (that of `new`; its picture and keypoints)
    score: float
    peak_score: float
    threshold: float
    model_name: str
    model_version: str
    model_id: str
    top_joints: list[dict[str, Any]]
    keypoints: list[list[float]]
    bbox: list[float]
    image_width: int | None
    image_height: int | None
    verdict: str | None
    verdict_note: str | None
    verdict_at: float | None
    has_snapshot: bool = False

    @property
    def duration_s(self) -> float:
        """Seconds from the episode's first anomalous frame to its end (or last message).

        An end time that is not on the frames' clock (a video file's episode ended by the
        service stopping is stamped with the wall clock) counts as the last frame's."""
        end = self.end_ts
        if end is None or not self.last_ts <= end <= self.last_ts + 3600:
            end = self.last_ts
        return float(end - self.start_ts)

    @property
    def snapshot(self) -> SnapshotRef:
        return SnapshotRef(file=snapshot_file(self.camera, self.alert_id))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["duration_s"] = self.duration_s
        return d


@dataclass(slots=True)
class Feedback:
    """An operator's verdict on an episode, with what the threshold must know of it."""

    alert_id: str
    camera: str
    verdict: str
    peak_score: float
    threshold: float
    model_name: str
    model_id: str


@dataclass(slots=True)
class Query:
    """A filter of the alert history (every field optional).

    Attributes:
        camera: only this camera.
        since, until: UNIX times; episodes first seen in ``[since, until)``.
        verdict: ``false_alert``, ``confirmed`` or ``none`` (no verdict yet).
        limit, offset: a page of the newest first.
    """

    camera: str | None = None
    since: float | None = None
    until: float | None = None
    verdict: str | None = None
    limit: int = 100
    offset: int = 0

    def where(self) -> tuple[str, list[Any]]:
        parts: list[str] = []
        args: list[Any] = []
        if self.camera is not None:
            parts.append("camera = ?")
            args.append(self.camera)
        if self.since is not None:
            parts.append("created_at >= ?")
            args.append(self.since)
        if self.until is not None:
            parts.append("created_at < ?")
            args.append(self.until)
        if self.verdict == "none":
            parts.append("verdict IS NULL")
        elif self.verdict is not None:
            if self.verdict not in VERDICTS:
                raise ValueError(f"verdict must be {', '.join(VERDICTS)} or none")
            parts.append("verdict = ?")
            args.append(self.verdict)
        return (" WHERE " + " AND ".join(parts)) if parts else "", args


_EVENT = (
    "(alert_id, type, frame_index, ts, score, produced_at, message) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = (
    "alert_id, camera, track_id, created_at, updated_at, start_ts, last_ts, end_ts, status, "
    "frame_index, score, peak_score, threshold, model_name, model_version, model_id, "
    "top_joints, keypoints, bbox, image_width, image_height, verdict, verdict_note, verdict_at"
)


class AlertStore:
    """The SQLite alert history (thread-safe: one connection behind a lock).

    Arguments:
        path: database file (its folder is created; the file too unless ``create`` is False).
        create: create the file when missing (the CLI reads existing stores only).
        migrations: the schema (tests add one to exercise upgrades).

    Raises:
        StoreError: the file is missing (``create=False``), not an SQLite database, from a
            newer posewatch, or cannot be written.
    """

    def __init__(
        self,
        path: str | Path,
        create: bool = True,
        migrations: Sequence[Sequence[str]] = MIGRATIONS,
    ):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(
                f"no alert store at {self.path} (`posewatch run` writes it: outputs.store)"
            )
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"alert store {self.path}: cannot create its folder ({exc.strerror or exc}); "
                "give outputs.store a path in a writable folder"
            ) from exc
        try:
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            if not create:
                self._check_is_store()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.version = self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"alert store {self.path}: {exc}") from exc

    # -- schema ----------------------------------------------------------------------------
    def _check_is_store(self) -> None:
        """Refuse, unchanged, a file that is not a posewatch alert store (another program's
        SQLite database, an empty file): opening an existing store only reads the file
        before this check; the WAL switch and the migrations would write to it."""
        (found,) = self._db.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not found:
            self._db.close()
            what = "an empty file" if self.path.stat().st_size == 0 else "no schema_version table"
            raise StoreError(
                f"{self.path} is not a posewatch alert store ({what}); give the file "
                "`posewatch run` writes (outputs.store)"
            )

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one process migrates; others wait, then see it done
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            (have,) = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            if have > len(migrations):
                raise StoreError(
                    f"alert store {self.path} has schema version {have}, newer than this "
                    f"posewatch knows ({len(migrations)}): upgrade posewatch, or use another "
                    "outputs.store"
                )
            for v in range(have + 1, len(migrations) + 1):
                for stmt in migrations[v - 1]:
                    db.execute(stmt)
                db.execute("INSERT INTO schema_version VALUES (?, ?)", (v, time.time()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(migrations)

    # -- writing ---------------------------------------------------------------------------
    def record(
        self,
        alert: Alert,
        snapshot: bytes | None = None,
        image_size: tuple[int, int] | None = None,
        scores: Iterable[tuple[float, float]] = (),
        privacy: bool = False,
    ) -> bool:
        """Store one alert message (idempotent: a message seen before changes nothing);
        ``new`` creates the episode with its picture and the scores before it. Returns
        whether the message was new."""
        msg = alert.model_dump_json()
        row = (alert.alert_id, alert.type, alert.frame_index, alert.last_ts, alert.score,
               alert.produced_at, msg)  # fmt: skip
        with self._lock, self._tx() as db:
            if self._has(db, alert.alert_id):
                if db.execute(f"INSERT OR IGNORE INTO events {_EVENT}", row).rowcount == 0:
                    return False  # seen before (a replay)
                self._update_episode(db, alert)
            else:
                self._insert_episode(db, alert, image_size)
                db.execute(f"INSERT INTO events {_EVENT}", row)
            points = [(alert.alert_id, float(t), float(s)) for t, s in scores]
            points.append((alert.alert_id, alert.last_ts, alert.score))
            db.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?)", points)
            if snapshot is not None:
                db.execute(
                    "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)",
                    (alert.alert_id, snapshot, int(privacy)),
                )
        return True

    @staticmethod
    def _has(db: sqlite3.Connection, alert_id: str) -> bool:
        return (
            db.execute("SELECT 1 FROM alerts WHERE alert_id = ?", (alert_id,)).fetchone()
            is not None
        )

    @staticmethod
    def _insert_episode(
        db: sqlite3.Connection, a: Alert, image_size: tuple[int, int] | None
    ) -> None:
        w, h = image_size if image_size is not None else (None, None)
        db.execute(
            f"INSERT INTO alerts ({_COLUMNS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
            (
                a.alert_id, a.camera, a.track_id, a.produced_at, a.produced_at, a.start_ts,
                a.last_ts, a.end_ts, "ended" if a.type == "end" else "open", a.frame_index,
                a.score, a.peak_score, a.threshold, a.model.name, a.model.version, a.model.id,
                json.dumps([j.model_dump() for j in a.top_joints]), json.dumps(a.keypoints),
                json.dumps(a.bbox), w, h,
            ),
        )  # fmt: skip

    @staticmethod
    def _update_episode(db: sqlite3.Connection, a: Alert) -> None:
        ended = a.type == "end"
        db.execute(
            "UPDATE alerts SET updated_at = MAX(updated_at, ?), last_ts = MAX(last_ts, ?), "
            "peak_score = MAX(peak_score, ?), end_ts = COALESCE(?, end_ts), "
            "status = CASE WHEN ? THEN 'ended' ELSE status END WHERE alert_id = ?",
            (a.produced_at, a.last_ts, a.peak_score, a.end_ts if ended else None, ended,
             a.alert_id),
        )  # fmt: skip

    def add_scores(self, points: Sequence[tuple[str, float, float]]) -> None:
        """``(alert id, frame time, smoothed score)`` of open episodes."""
        if not points:
            return
        with self._lock, self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO scores VALUES (?, ?, ?)", points)

    def add_poses(self, alert_id: str, rows: Sequence[Sequence[float]]) -> None:
        """The person's poses over the episode: rows of ``frame index, time, x1, y1, x2, y2``,
        the 17 keypoints' ``x, y, confidence`` (:data:`POSE_ROW` values) and the rate the
        frame stated (frames/s, 0: none; rows stored before it have :data:`POSE_ROW`)."""
        # rounded to 10 ms / 0.01 px, but the rate exact: frames are placed by it
        text = json.dumps(
            [[*(round(float(v), 2) for v in r[:POSE_ROW]), *map(float, r[POSE_ROW:])] for r in rows]
        )
        with self._lock, self._tx() as db:
            db.execute("INSERT OR REPLACE INTO poses VALUES (?, ?)", (alert_id, text))

    def poses(self, alert_id: str) -> list[list[float]] | None:
        """The rows :meth:`add_poses` stored (None when the episode has none: an alert read
        from the topic by ``posewatch ui`` carries one frame's pose only)."""
        with self._lock:
            row = self._db.execute(
                "SELECT frames FROM poses WHERE alert_id = ?", (alert_id,)
            ).fetchone()
        return None if row is None else list(json.loads(row[0]))

    def set_verdict(
        self, alert_id: str, verdict: str, note: str = "", source: str = "web"
    ) -> AlertRecord:
        """Record an operator's verdict (the latest counts; every one is kept).

        Raises:
            KeyError: no such alert.
            ValueError: a verdict other than :data:`VERDICTS`, or a note over
                :data:`MAX_NOTE` characters.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        if len(note) > MAX_NOTE:
            raise ValueError(f"note has {len(note)} characters; at most {MAX_NOTE}")
        now = time.time()
        with self._lock, self._tx() as db:
            if not self._has(db, alert_id):
                raise KeyError(alert_id)
            db.execute(
                "UPDATE alerts SET verdict = ?, verdict_note = ?, verdict_at = ? "
                "WHERE alert_id = ?",
                (verdict, note, now, alert_id),
            )
            db.execute(
                "INSERT INTO verdicts (alert_id, verdict, note, at, source) VALUES (?, ?, ?, ?, ?)",
                (alert_id, verdict, note, now, source),
            )
        rec = self.get(alert_id)
        assert rec is not None
        return rec

    # -- reading ---------------------------------------------------------------------------
    def get(self, alert_id: str) -> AlertRecord | None:
        rows = self._select(" WHERE alert_id = ?", [alert_id])
        return rows[0] if rows else None

    def resolve(self, prefix: str) -> list[str]:
        """Alert ids starting with ``prefix`` (at most 2: enough to tell it is ambiguous)."""
        like = prefix.replace("\\", "").replace("%", "").replace("_", "") + "%"
        with self._lock:
            rows = self._db.execute(
                "SELECT alert_id FROM alerts WHERE alert_id LIKE ? ORDER BY alert_id LIMIT 2",
                (like,),
            ).fetchall()
        return [r[0] for r in rows]

    def query(self, q: Query | None = None) -> list[AlertRecord]:
        """Episodes matching ``q``, newest first.

        Raises:
            ValueError: an unknown verdict filter.
        """
        q = q or Query()
        where, args = q.where()
        tail = " ORDER BY created_at DESC, alert_id LIMIT ? OFFSET ?"
        return self._select(where + tail, [*args, q.limit, q.offset])

    def _select(self, rest: str, args: list[Any]) -> list[AlertRecord]:
        has_snapshot = "EXISTS (SELECT 1 FROM snapshots s WHERE s.alert_id = alerts.alert_id)"
        sql = f"SELECT {_COLUMNS}, {has_snapshot} FROM alerts{rest}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def count(self, q: Query | None = None) -> int:
        where, args = (q or Query()).where()
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM alerts{where}", args).fetchone()[0])

    def events(self, alert_id: str) -> list[dict[str, Any]]:
        """The episode's messages, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT message FROM events WHERE alert_id = ? ORDER BY produced_at, id",
                (alert_id,),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def scores(self, alert_id: str) -> list[tuple[float, float]]:
        """``(frame time, smoothed score)`` of the episode (and the seconds before it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, score FROM scores WHERE alert_id = ? ORDER BY ts", (alert_id,)
            ).fetchall()
        return [(float(t), float(s)) for t, s in rows]

    def snapshot(self, alert_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT jpeg FROM snapshots WHERE alert_id = ?", (alert_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def cameras(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT camera FROM alerts ORDER BY camera")
            return [r[0] for r in rows.fetchall()]

    def verdict_log(self, alert_id: str) -> list[dict[str, Any]]:
        """Every verdict given to the episode, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT verdict, note, at, source FROM verdicts WHERE alert_id = ? ORDER BY id",
                (alert_id,),
            ).fetchall()
        return [dict(zip(("verdict", "note", "at", "source"), r, strict=True)) for r in rows]

    def feedback(self, camera: str | None = None) -> list[Feedback]:
        """Episodes with a verdict (of ``camera``, or all), for calibration."""
        sql = (
            "SELECT alert_id, camera, verdict, peak_score, threshold, model_name, model_id "
            "FROM alerts WHERE verdict IS NOT NULL"
        )
        args: list[Any] = []
        if camera is not None:
            sql += " AND camera = ?"
            args.append(camera)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at", args).fetchall()
        return [Feedback(*r) for r in rows]

    def integrity(self) -> str:
        """``ok``, or what SQLite's integrity check found."""
        with self._lock:
            return "; ".join(r[0] for r in self._db.execute("PRAGMA integrity_check").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``with``: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


#: frame index, time, box, keypoints, the rate the frame stated (0: none)
_PoseRow = tuple[int, float, np.ndarray, np.ndarray, float]


def _record(r: Sequence[Any]) -> AlertRecord:
    (aid, cam, tid, created, updated, start, last, end, status, fi, score, peak, thr, mname,
     mver, mid, joints, kp, bbox, w, h, verdict, note, vat, snap) = r  # fmt: skip
    return AlertRecord(
        aid, cam, int(tid), created, updated, start, last, end, status, int(fi), score, peak,
        thr, mname, mver, mid, json.loads(joints), json.loads(kp), json.loads(bbox), w, h,
        verdict, note, vat, bool(snap),
    )  # fmt: skip


def alert_person(alert: Alert) -> Person:
    """The flagged person as the alert carries it (missing keypoints NaN)."""
    kp = np.asarray(alert.keypoints, np.float32).reshape(17, 3)
    kp[kp[:, 2] <= 0, :2] = np.nan
    return Person(alert.track_id, np.asarray(alert.bbox, np.float32), 1.0, kp)


def alert_snapshot(alert: Alert, view: FrameView | None, privacy: bool = False) -> bytes:
    """JPEG of the episode's frame with the person's skeleton, box and score bar; without a
    frame (split mode) or in privacy mode, on an empty canvas of the frame's size."""
    person = None
    if view is not None:
        person = next((p for p in view.persons if p.track_id == alert.track_id), None)
    person = person or alert_person(alert)
    if view is not None and not privacy:
        canvas = view.canvas()
    else:
        w, h = view.image_size if view is not None else _extent(alert)
        canvas = blank_canvas(w, h)
    return snapshot_jpeg(canvas, person, alert.score, alert.threshold, quality=85)


def _extent(alert: Alert) -> tuple[int, int]:
    """A canvas size that holds the alert's box (no frame size known)."""
    return (
        max(64, int(np.ceil(max(alert.bbox[2], 1.0))) + 16),
        max(64, int(np.ceil(max(alert.bbox[3], 1.0))) + 16),
    )


class StoreSink(AlertSink):
    """Every alert and the scores of open episodes into an :class:`AlertStore`.

    Arguments:
        path: the SQLite file (``outputs.store``).
        privacy: pictures on an empty canvas (``outputs.privacy: skeletons_only``).
        context: scored points of each person kept to show the rise before ``new``.
    """

    name = "store"
    required = True

    def __init__(self, path: str | Path, privacy: bool = False, context: int = 64):
        self.store = AlertStore(path)
        self.privacy = privacy
        self.context = context
        self._open: dict[tuple[str, int], str] = {}  # (camera, track) -> open alert id
        self._recent: OrderedDict[tuple[str, int], deque[tuple[float, float]]] = OrderedDict()
        self._pending: list[tuple[str, float, float]] = []
        self._last_write = time.monotonic()
        # (camera, track) -> its last frames; alert id -> the open episode's frames
        self._track_rows: OrderedDict[tuple[str, int], deque[_PoseRow]] = OrderedDict()
        self._episode_rows: dict[str, list[_PoseRow]] = {}

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        key = (alert.camera, alert.track_id)
        snap: bytes | None = None
        before: tuple[tuple[float, float], ...] = ()
        size: tuple[int, int] | None = None
        if alert.type == "new":
            snap = alert_snapshot(alert, view, self.privacy)
            before = tuple(self._recent.get(key, ()))
            size = view.image_size if view is not None else None
            self._open[key] = alert.alert_id
            self._episode_rows[alert.alert_id] = list(self._track_rows.get(key, ()))
        elif alert.type == "end":
            self._open.pop(key, None)
        self._write_pending()  # the episode's scores so far, before its end
        self.store.record(alert, snap, size, before, self.privacy)
        if alert.type == "end":
            self._write_poses(alert.alert_id)

    def frame(self, view: FrameView) -> None:
        self._keep_poses(view)
        for s in view.scores:
            key = (view.camera, s.track_id)
            ring = self._recent.get(key)
            if ring is None:
                ring = self._recent[key] = deque(maxlen=self.context)
                if len(self._recent) > 4096:  # persons long gone
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(key)
            ring.append((view.timestamp, s.smoothed))
            aid = self._open.get(key)
            if aid is not None:
                self._pending.append((aid, view.timestamp, s.smoothed))
        if len(self._pending) >= 256:
            self._write_pending()

    def _keep_poses(self, view: FrameView) -> None:
        """Each person's last frames (references only), and every frame of open episodes."""
        for p in view.persons:
            key = (view.camera, p.track_id)
            row = (view.frame_index, view.timestamp, p.bbox, p.keypoints, view.stated_fps or 0.0)
            ring = self._track_rows.get(key)
            if ring is None:
                ring = self._track_rows[key] = deque(maxlen=PRE_ROLL)
                if len(self._track_rows) > 4096:
                    self._track_rows.popitem(last=False)
            else:
                self._track_rows.move_to_end(key)
            ring.append(row)
            aid = self._open.get(key)
            if aid is not None:
                rows = self._episode_rows.setdefault(aid, [])
                if len(rows) < MAX_EPISODE_FRAMES:
                    rows.append(row)

    def _write_poses(self, alert_id: str) -> None:
        rows = self._episode_rows.pop(alert_id, None)
        if rows:
            self.store.add_poses(
                alert_id,
                [[fi, ts, *np.asarray(b, np.float64).tolist(),
                  *np.nan_to_num(np.asarray(k, np.float64)).ravel().tolist(), fps]
                 for fi, ts, b, k, fps in rows],
            )  # fmt: skip

    def tick(self) -> None:
        if self._pending and time.monotonic() - self._last_write > 1.0:
            self._write_pending()

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._last_write = time.monotonic()
        self.store.add_scores(pending)

    def flush(self, timeout: float = 10.0) -> bool:
        self._write_pending()
        return True

    def close(self, timeout: float = 10.0) -> bool:
        self._write_pending()
        for aid in list(self._episode_rows):  # episodes left open (split mode member stops)
            self._write_poses(aid)
        self.store.close()
        return True


class SnapshotStamp(AlertSink):
    """Fills each alert's ``snapshot`` reference before any sink delivers it (the router
    hands every sink the same message, this one first): the file name, and its URL in the
    web view once :attr:`base_url` is known (the UI sets it when it listens)."""

    name = "snapshot_ref"

    def __init__(self, base_url: str | None = None):
        self.base_url = base_url

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        url = None
        if self.base_url:
            url = f"{self.base_url.rstrip('/')}/api/alerts/{alert.alert_id}/snapshot.jpg"
        alert.snapshot = SnapshotRef(file=snapshot_file(alert.camera, alert.alert_id), url=url)


__all__ = [
    "MAX_NOTE",
    "MIGRATIONS",
    "VERDICTS",
    "AlertRecord",
    "AlertStore",
    "Feedback",
    "Query",
    "SnapshotStamp",
    "StoreError",
    "StoreSink",
    "alert_person",
    "alert_snapshot",
    "parse_time",
]
