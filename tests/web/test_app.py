"""The web application without a browser: bad input gets a 4xx with a clear message and
changes nothing; live images are encoded only when asked for, at a bounded rate; in privacy
mode no camera pixel leaves through any sink or page."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from pipelines.config import PosewatchConfig
from pipelines.sinks import build_sinks
from pipelines.sinks.store import StoreSink
from pipelines.sinks.ui import UiSink
from pipelines.web.app import create_app
from pipelines.web.live import LiveHub
from tests.web.helpers import episode

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def app_and_store(tmp_path: Path) -> Any:
    sink = StoreSink(tmp_path / "a.db")
    hub = LiveHub(["gate"])
    for alerts, view in episode("gate", image=np.zeros((480, 640, 3), np.uint8)):
        for a in alerts:
            sink.publish(a, view)
        sink.frame(view)
        hub.frame(view)
    sink.flush()
    client = TestClient(create_app(hub, tmp_path / "a.db"))
    yield client, sink.store, tmp_path / "a.db"
    sink.close()


def snapshot_of_db(path: Path) -> dict[str, list[Any]]:
    db = sqlite3.connect(path)
    out = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
           for t in ("alerts", "events", "verdicts", "scores")}  # fmt: skip
    db.close()
    return out


def test_pages_and_api_answer(app_and_store: Any) -> None:
    client, store, _ = app_and_store
    aid = store.query()[0].alert_id
    for url in ("/cameras", "/alerts", f"/alerts/{aid}", "/alerts?camera=gate&verdict=none"):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), url
    assert aid in client.get("/alerts").text
    page = client.get(f"/alerts/{aid}").text
    assert page.count("<line") >= 12 + 3 and "<polyline" in page  # skeleton, plot
    assert client.get("/api/alerts").json()["total"] == 1
    assert client.get("/api/alerts?since=2000-01-01T00:00&camera=gate").json()["total"] == 1
    assert client.get("/api/alerts?until=2000-01-01T00:00").json()["total"] == 0
    detail = client.get(f"/api/alerts/{aid}").json()
    assert [e["type"] for e in detail["events"]] == ["new", "update", "update", "end"]
    assert len(detail["scores"]) >= 30
    for url in (f"/api/alerts/{aid}/snapshot.jpg", f"/api/alerts/{aid}/thumb.jpg"):
        r = client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = cv2.imdecode(np.frombuffer(r.content, np.uint8), 1)
    assert thumb.shape == (144, 192, 3)
    r = client.post(f"/api/alerts/{aid}/verdict", json={"verdict": "confirmed", "note": "yes"})
    assert r.status_code == 200 and r.json() == {"alert_id": aid, "verdict": "confirmed",
                                                 "note": "yes"}  # fmt: skip
    assert store.get(aid).verdict == "confirmed"


BAD = [
    ("GET", "/alerts/0000dead-beef", None, {}, 404, "no alert with id '0000dead-beef'"),
    ("GET", "/api/alerts/0000dead-beef", None, {}, 404, "no alert with id"),
    ("GET", "/api/alerts/0000dead-beef/snapshot.jpg", None, {}, 404, "no alert with id"),
    ("GET", "/api/alerts/..%2F..%2Fetc%2Fpasswd", None, {}, 404, ""),
    ("GET", "/api/alerts?since=yesterday", None, {}, 400,
     "since: 'yesterday' is not a time: give ISO 8601"),
    ("GET", "/api/alerts?until=2026-13-45", None, {}, 400, "until: '2026-13-45' is not a time"),
    ("GET", "/api/alerts?limit=0", None, {}, 422, "limit: Input should be greater than or equal to 1"),
    ("GET", "/api/alerts?limit=many", None, {}, 422, "limit: Input should be a valid integer"),
    ("GET", "/api/alerts?verdict=maybe", None, {}, 422, "verdict: Input should be"),
    ("GET", "/api/alerts?camera=..%2Fx", None, {}, 400, "camera: '../x' is not a camera name"),
    ("GET", "/alerts?since=soon", None, {"accept": "text/html"}, 400, "since: &#39;soon&#39;"),
    ("GET", "/api/cameras/nope/frame.jpg", None, {}, 404, "no camera 'nope'"),
    ("POST", "/api/alerts/0000dead-beef/verdict", {"verdict": "false_alert"}, {}, 404,
     "no alert with id '0000dead-beef'; nothing was changed"),
    ("POST", "{aid}/verdict", {"verdict": "maybe"}, {}, 422,
     "verdict: Input should be 'false_alert' or 'confirmed'"),
    ("POST", "{aid}/verdict", {"verdict": "confirmed", "note": "x" * 3000}, {}, 422,
     "note: String should have at most 2000 characters"),
    ("POST", "{aid}/verdict", {"verdict": "confirmed", "note": "x" * 2**20}, {}, 413,
     "over the 16384-byte limit; nothing was changed"),
    ("POST", "{aid}/verdict", {"verdict": "confirmed", "extra": 1}, {}, 422,
     "extra: Extra inputs are not permitted"),
    ("POST", "{aid}/verdict", "verdict=confirmed", {"content-type": "application/x-www-form-urlencoded"},
     415, "send the verdict as application/json"),
    ("POST", "{aid}/verdict", "{not json", {"content-type": "application/json"}, 422,
     "Invalid JSON"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "body", "headers", "status", "message"), BAD)
def test_bad_input_gets_a_4xx_with_a_clear_message_and_changes_nothing(
    app_and_store: Any, method: str, url: str, body: Any, headers: dict[str, str], status: int,
    message: str,
) -> None:  # fmt: skip
    client, store, path = app_and_store
    aid = store.query()[0].alert_id
    url = url.replace("{aid}", f"/api/alerts/{aid}")
    before = snapshot_of_db(path)
    if method == "GET":
        r = client.get(url, headers=headers)
    elif isinstance(body, str):
        r = client.post(url, content=body, headers=headers)
    else:
        r = client.post(url, content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.text
    if r.headers["content-type"].startswith("application/json"):
        assert set(r.json()) == {"error"}
    assert snapshot_of_db(path) == before  # nothing changed
    assert store.get(aid).verdict is None


def test_live_images_are_encoded_only_when_asked_and_at_most_max_fps(tmp_path: Path) -> None:
    hub = LiveHub(["gate"], max_fps=2.0)
    client = TestClient(create_app(hub, None))
    views = [v for _, v in episode(image=np.full((480, 640, 3), 60, np.uint8))]
    for v in views:
        hub.frame(v)  # nobody watching: nothing drawn, nothing encoded
    assert hub.encoded == 0
    first = client.get("/api/cameras/gate/frame.jpg").content
    for _ in range(10):  # ten reads at once: one encoding (rate bound)
        assert client.get("/api/cameras/gate/frame.jpg").content == first
    assert hub.encoded == 1 and hub.requests == 11
    hub.cameras["gate"].jpeg_at -= 1.0  # half a second at 2 frames/s later...
    assert client.get("/api/cameras/gate/frame.jpg").content == first  # ...no newer frame
    hub.frame(views[20])
    assert client.get("/api/cameras/gate/frame.jpg").content != first
    assert hub.encoded == 2
    states = client.get("/api/cameras").json()
    assert states[0]["name"] == "gate" and states[0]["persons"] == 1 and states[0]["frames"] == 61
    assert client.get("/api/alerts").status_code == 404  # no store configured: said so
    assert "outputs.store is not set" in client.get("/api/alerts").json()["error"]


def privacy_outputs(tmp: Path, image: np.ndarray, privacy: str) -> dict[str, bytes]:
    """Every picture that leaves the process when ``image`` is the camera's frame: snapshot
    files, annotated video frames, the store's pictures, the web view's live image."""
    cfg = PosewatchConfig.model_validate({
        "cameras": {"gate": {"source": "gate.mp4"}},
        "outputs": {"alerts_jsonl": str(tmp / "a.jsonl"), "snapshots": str(tmp / "snap"),
                    "annotated_video": str(tmp / "video"), "store": str(tmp / "a.db"),
                    "privacy": privacy},
    })  # fmt: skip
    hub = LiveHub(["gate"], privacy=privacy != "off")
    from pipelines.sinks.privacy import redact

    sinks = [*build_sinks(cfg), *redact([UiSink(hub)], privacy)]
    live = []
    for alerts, view in episode("gate", image=image):
        for s in sinks:
            for a in alerts:
                s.publish(a, view)
            s.frame(view)
        if view.frame_index % 10 == 0:
            live.append(hub.jpeg("gate") or b"")
            hub.cameras["gate"].jpeg_at = 0.0
    for s in sinks:
        s.close()
    out = {f"live{i}": j for i, j in enumerate(live)}
    out |= {p.name: p.read_bytes() for p in sorted((tmp / "snap").glob("*.jpg"))}
    cap = cv2.VideoCapture(str(tmp / "video" / "gate.mp4"))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out[f"video{i}"] = frame.tobytes()
        i += 1
    db = sqlite3.connect(tmp / "a.db")
    out |= {f"db{k}": bytes(v) for k, v in db.execute("SELECT alert_id, jpeg FROM snapshots")}
    return out


def test_privacy_mode_lets_no_camera_pixel_out(tmp_path: Path) -> None:
    """The same poses over two different camera images: in privacy mode every picture that
    leaves (snapshot files, video, the store, the web view) is byte-identical, so none
    carries a pixel of the camera; with privacy off they differ (the test sees a leak)."""
    rng = np.random.default_rng(0)
    street = np.full((480, 640, 3), 120, np.uint8)
    noise = rng.integers(0, 255, (480, 640, 3), np.uint8)
    got = {}
    for privacy in ("skeletons_only", "off"):
        for name, image in (("street", street), ("noise", noise)):
            got[privacy, name] = privacy_outputs(tmp_path / privacy / name, image, privacy)
    a, b = got["skeletons_only", "street"], got["skeletons_only", "noise"]
    count = {kind: sum(k.startswith(kind) for k in a) for kind in ("live", "video", "db", "gate-")}
    assert count == {"live": 6, "video": 60, "db": 1, "gate-": 1}  # gate-<id>.jpg: a snapshot
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    off_a, off_b = got["off", "street"], got["off", "noise"]
    assert sum(off_a[k] != off_b[k] for k in off_a) >= len(off_a) - 1


def test_a_port_in_use_is_one_clear_start_up_error() -> None:
    import socket

    from pipelines.serving import RuntimeConfigError
    from pipelines.web.server import UiServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeConfigError, match=rf"ui: cannot listen on 127\.0\.0\.1:{port} "
                           r"\(Address already in use\).*ui\.port.*ui\.enabled: false"):  # fmt: skip
            UiServer(create_app(LiveHub([]), None), "127.0.0.1", port)


def test_a_page_served_on_loopback_refuses_other_host_names() -> None:
    """A DNS-rebinding page (evil.example resolving to 127.0.0.1) gets nothing."""
    from pipelines.web.app import allowed_hosts

    hosts = allowed_hosts("127.0.0.1")
    client = TestClient(create_app(LiveHub([]), None, hosts=hosts), base_url="http://127.0.0.1")
    assert client.get("/api/cameras").status_code == 200
    for host in ("evil.example", "evil.example:8108", "127.0.0.1.evil.example"):
        r = client.get("/api/cameras", headers={"host": host})
        assert r.status_code == 400, host
    assert allowed_hosts("0.0.0.0") is None  # exposed on purpose: behind the site's proxy
