"""The alert store (SQLite): history, queries, verdicts, migrations, WAL and SIGKILL."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipelines.alerts import Alert
from pipelines.sinks.store import (
    MIGRATIONS,
    AlertStore,
    Query,
    StoreError,
    StoreSink,
    alert_snapshot,
)
from tests.web.helpers import episode

REPO = Path(__file__).resolve().parents[2]


def run_episode(
    sink: StoreSink, camera: str = "gate", image: np.ndarray | None = None
) -> list[Alert]:
    sent: list[Alert] = []
    for alerts, view in episode(camera, image=image):
        for a in alerts:
            sink.publish(a, view)
            sent.append(a)
        sink.frame(view)
    sink.flush()
    return sent


def test_episodes_events_scores_poses_and_pictures_are_kept(tmp_path: Path) -> None:
    sink = StoreSink(tmp_path / "a.db")
    image = np.full((480, 640, 3), 90, np.uint8)
    sent = run_episode(sink, "gate", image) + run_episode(sink, "lawn")
    assert [a.type for a in sent] == ["new", "update", "update", "end"] * 2
    db = sink.store
    assert db.count() == 2 and db.cameras() == ["gate", "lawn"]
    gate = db.query(Query(camera="gate"))
    assert len(gate) == 1
    r = gate[0]
    assert (r.status, r.track_id, r.image_width, r.image_height) == ("ended", 3, 640, 480)
    assert r.peak_score == pytest.approx(max(a.peak_score for a in sent[:4]))
    assert r.duration_s == pytest.approx(sent[3].last_ts - sent[0].start_ts)
    assert [e["type"] for e in db.events(r.alert_id)] == ["new", "update", "update", "end"]
    # Scores: every frame of the open episode, and the ones before `new` (the rise).
    pts = db.scores(r.alert_id)
    ts = [t for t, _ in pts]
    assert ts == sorted(ts) and ts[0] < sent[0].last_ts and len(pts) >= 30
    # Poses: the episode's frames and the frames before it (up to a scoring window and some).
    rows = db.poses(r.alert_id)
    assert rows is not None and len(rows[0]) == 6 + 51 + 1  # and the rate stated (none: 0)
    assert {x[57] for x in rows} == {0.0}
    assert [int(x[0]) for x in rows] == list(range(0, sent[3].frame_index))  # to the end
    # The picture: the frame of `new` (the grey image), 640 x 480.
    img = cv2.imdecode(np.frombuffer(db.snapshot(r.alert_id) or b"", np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (480, 640, 3) and abs(float(np.median(img)) - 90) < 3
    # A replayed message changes nothing (at-least-once delivery).
    assert not db.record(sent[0]) and len(db.events(r.alert_id)) == 4
    sink.close()


def test_queries_filter_by_camera_time_and_verdict(tmp_path: Path) -> None:
    sink = StoreSink(tmp_path / "a.db")
    run_episode(sink, "gate")
    run_episode(sink, "lawn")
    db = sink.store
    gate, lawn = (db.query(Query(camera=c))[0] for c in ("gate", "lawn"))
    db.set_verdict(gate.alert_id, "false_alert", "a flag in the wind")
    assert [r.camera for r in db.query(Query(verdict="false_alert"))] == ["gate"]
    assert [r.camera for r in db.query(Query(verdict="none"))] == ["lawn"]
    assert db.query(Query(verdict="confirmed")) == []
    t = lawn.created_at
    assert {r.camera for r in db.query(Query(since=t))} == {"lawn"}
    assert {r.camera for r in db.query(Query(until=t))} == {"gate"}
    assert db.query(Query(since=t + 1000)) == [] and db.count(Query(until=0)) == 0
    assert [r.camera for r in db.query()] == ["lawn", "gate"]  # newest first
    assert (
        len(db.query(Query(limit=1))) == 1
        and db.query(Query(limit=1, offset=1))[0].camera == "gate"
    )
    with pytest.raises(ValueError, match="verdict must be"):
        db.query(Query(verdict="maybe"))
    sink.close()


def test_a_verdict_is_kept_across_restarts_and_every_verdict_is_logged(tmp_path: Path) -> None:
    sink = StoreSink(tmp_path / "a.db")
    aid = run_episode(sink)[0].alert_id
    sink.store.set_verdict(aid, "confirmed", "", source="web")
    sink.store.set_verdict(aid, "false_alert", "it was a shadow", source="cli")
    with pytest.raises(KeyError):
        sink.store.set_verdict("no-such-alert", "confirmed")
    with pytest.raises(ValueError, match="at most 2000"):
        sink.store.set_verdict(aid, "confirmed", "x" * 2001)
    with pytest.raises(ValueError, match="verdict must be one of"):
        sink.store.set_verdict(aid, "unsure")
    sink.close()
    again = AlertStore(tmp_path / "a.db", create=False)
    r = again.get(aid)
    assert r is not None and (r.verdict, r.verdict_note) == ("false_alert", "it was a shadow")
    log = again.verdict_log(aid)
    assert [(v["verdict"], v["source"]) for v in log] == [
        ("confirmed", "web"),
        ("false_alert", "cli"),
    ]
    # The same episode delivered again after a restart keeps its verdict.
    sink2 = StoreSink(tmp_path / "a.db")
    run_episode(sink2)
    assert sink2.store.get(aid).verdict == "false_alert"  # type: ignore[union-attr]
    assert sink2.store.count() == 1
    sink2.close()
    again.close()


def test_schema_migrations_upgrade_old_stores_and_refuse_newer_ones(tmp_path: Path) -> None:
    old = AlertStore(tmp_path / "a.db", migrations=MIGRATIONS[:1])
    assert old.version == 1
    sink_alerts = [a for alerts, _ in episode() for a in alerts]
    for a in sink_alerts:
        old.record(a)
    old.close()
    db = AlertStore(tmp_path / "a.db")  # brings it to the current version
    assert db.version == len(MIGRATIONS) == 2
    raw = sqlite3.connect(tmp_path / "a.db")
    assert [v for (v,) in raw.execute("SELECT version FROM schema_version ORDER BY version")] == [
        1,
        2,
    ]
    assert db.count() == 1 and db.poses(sink_alerts[0].alert_id) is None  # data kept
    db.close()
    # A later posewatch adds a migration: applied once, the data kept.
    extra = (*MIGRATIONS, ("ALTER TABLE alerts ADD COLUMN site TEXT",))
    db3 = AlertStore(tmp_path / "a.db", migrations=extra)
    assert db3.version == 3 and db3.count() == 1
    db3.close()
    with pytest.raises(
        StoreError, match=r"schema version 3, newer than this posewatch knows \(2\)"
    ):
        AlertStore(tmp_path / "a.db")
    (tmp_path / "junk.db").write_bytes(b"not a database, just bytes" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        AlertStore(tmp_path / "junk.db")
    with pytest.raises(StoreError, match="no alert store at"):
        AlertStore(tmp_path / "missing.db", create=False)


WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from pipelines.sinks.store import AlertStore
from tests.web.helpers import episode
db = AlertStore({path!r})
alerts = [a for al, _ in episode() for a in al]
n = 0
while True:
    for a in alerts:
        db.record(a.model_copy(update={{"alert_id": f"{{n:08d}}-" + a.alert_id[9:]}}), b"x" * 20000)
    n += 1
    print(n, flush=True)
"""


def test_the_store_survives_sigkill_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path))],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    done = 0
    deadline = time.monotonic() + 60
    while done < 200 and time.monotonic() < deadline:
        done = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # in the middle of writing the next episode
    proc.wait(10)
    assert done >= 200
    db = AlertStore(path)
    assert db.integrity() == "ok"
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    n = db.count()
    assert done <= n <= done + 1  # every committed episode, at most one more
    complete = raw.execute(
        "SELECT COUNT(*) FROM alerts a WHERE (SELECT COUNT(*) FROM events e "
        "WHERE e.alert_id = a.alert_id) = 4"
    ).fetchone()[0]
    assert complete >= done  # each message was one transaction: no torn episode row
    assert raw.execute("SELECT COUNT(*) FROM events e LEFT JOIN alerts a USING (alert_id) "
                       "WHERE a.alert_id IS NULL").fetchone()[0] == 0  # fmt: skip
    db.close()


def test_privacy_snapshots_hold_no_camera_pixels() -> None:
    alerts, view = next(
        (a, v) for a, v in episode(image=np.full((480, 640, 3), 200, np.uint8)) if a
    )
    plain = cv2.imdecode(np.frombuffer(alert_snapshot(alerts[0], view), np.uint8), 1)
    private = cv2.imdecode(np.frombuffer(alert_snapshot(alerts[0], view, True), np.uint8), 1)
    assert float(np.median(plain)) > 190 and float(np.median(private)) < 40
