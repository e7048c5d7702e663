"""``posewatch alerts list|show|export|mark`` on an alert store, and the services' logging
options (``--log-level``, ``--log-format json``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines import cli
from pipelines.cli import app
from pipelines.sinks.store import StoreSink
from tests.web.helpers import episode


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    sink = StoreSink(tmp_path / "alerts.db")
    ids = {}
    for cam in ("gate", "lawn"):
        for alerts, view in episode(cam, image=np.zeros((480, 640, 3), np.uint8)):
            for a in alerts:
                sink.publish(a, view)
                ids[cam] = a.alert_id
            sink.frame(view)
    sink.close()
    return tmp_path / "alerts.db", ids


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_list_show_mark_and_export(store: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    db, ids = store
    code, out = invoke("alerts", "list", "--store", str(db))
    assert code == 0 and ids["gate"] in out and ids["lawn"] in out and "2 of 2 episodes" in out
    code, out = invoke("alerts", "list", "--store", str(db), "--camera", "gate")
    assert code == 0 and ids["gate"] in out and ids["lawn"] not in out
    code, out = invoke("alerts", "mark", ids["gate"][:8], "--store", str(db),
                       "--verdict", "false_alert", "--note", "a dog")  # fmt: skip
    assert code == 0 and f"alert {ids['gate']}: false_alert" in out
    code, out = invoke("alerts", "list", "--store", str(db), "--verdict", "none", "--json")
    assert code == 0 and [json.loads(x)["camera"] for x in out.splitlines()] == ["lawn"]
    snap = tmp_path / "snap.jpg"
    code, out = invoke("alerts", "show", ids["gate"], "--store", str(db), "--snapshot", str(snap))
    assert code == 0 and "verdict: false_alert (a dog)" in out and "camera gate, person 3" in out
    assert cv2.imread(str(snap)).shape == (480, 640, 3)
    code, out = invoke("alerts", "show", ids["gate"], "--store", str(db), "--json")
    d = json.loads(out)
    assert d["verdict"] == "false_alert" and [v["source"] for v in d["verdicts"]] == ["cli"]
    assert [e["type"] for e in d["events"]] == ["new", "update", "update", "end"]
    code, out = invoke("alerts", "export", "--store", str(db), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 2 and {r["camera"] for r in rows} == {"gate", "lawn"}
    assert {r["verdict"] for r in rows} == {"false_alert", ""} and "keypoints" not in rows[0]
    assert float(rows[0]["peak_score"]) > 2.0 and rows[0]["top_joints"].count(" ") == 2
    out_file = tmp_path / "alerts.json"
    code, _ = invoke("alerts", "export", "--store", str(db), "--format", "json",
                     "--out", str(out_file), "--camera", "lawn")  # fmt: skip
    assert code == 0 and [r["camera"] for r in json.loads(out_file.read_text())] == ["lawn"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("alerts", "list", "--store", "{tmp}/none.db"), 2, "no alert store at"),
        (("alerts", "list", "--store", "{db}", "--since", "soon"), 2, "'soon' is not a time"),
        (("alerts", "list", "--store", "{db}", "--verdict", "maybe"), 2, "--verdict must be"),
        (("alerts", "show", "ffffffff", "--store", "{db}"), 1, "no alert with id 'ffffffff'"),
        (("alerts", "show", "", "--store", "{db}"), 1, "no alert with id ''"),
        (("alerts", "export", "--store", "{db}", "--format", "xml"), 2, "csv or json"),
        (("alerts", "mark", "{id}", "--store", "{db}", "--verdict", "meh"), 2, "verdict must be"),
    ],
)
def test_bad_alerts_commands_say_what_is_wrong(
    store: tuple[Path, dict[str, str]], tmp_path: Path, args: tuple[str, ...], code: int,
    message: str,
) -> None:  # fmt: skip
    db, ids = store
    filled = [a.format(tmp=tmp_path, db=db, id=ids["gate"]) for a in args]
    got, out = invoke(*filled)
    assert got == code and message in out


def test_json_logs_and_levels(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        cli._service_logging("warning", "json")
        logging.getLogger("pipelines.x").info("not shown")
        logging.getLogger("pipelines.x").warning("camera %s: %s", "gate", "offline")
        assert logging.getLogger("kafka").level == logging.WARNING
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        rec = json.loads(err[0])
        assert (rec["level"], rec["logger"], rec["message"]) == (
            "WARNING",
            "pipelines.x",
            "camera gate: offline",
        )
        assert rec["time"].endswith("+00:00")
        cli._service_logging("DEBUG", "text")  # the same handler, now text
        logging.getLogger("pipelines.x").debug("detail")
        assert " DEBUG pipelines.x: detail" in capsys.readouterr().err
        assert logging.getLogger("kafka").level == logging.DEBUG
        assert sum(isinstance(h, cli._StderrHandler) for h in root.handlers) == 1
        import typer

        with pytest.raises(typer.Exit) as exit_:
            cli._service_logging("loud", "text")
        assert exit_.value.exit_code == 2
        assert "--log-level must be DEBUG, INFO, WARNING or ERROR" in capsys.readouterr().err
    finally:
        for h in [h for h in root.handlers if isinstance(h, cli._StderrHandler)]:
            root.removeHandler(h)
        root.setLevel(level)
        logging.getLogger("kafka").setLevel(logging.WARNING)


def test_a_library_warning_is_a_json_log_line_with_its_secret_redacted() -> None:
    """A third party's ``warnings.warn`` (torch 2.14 warns that ``torch.jit.trace``, which
    the pose-model export uses, is deprecated) went to stderr as a bare line and broke the
    one-JSON-record-per-line contract of ``--log-format json``."""
    code = (
        "import warnings; from pipelines import cli; cli._service_logging('INFO', 'json'); "
        "warnings.warn('deprecated; see kafka://bob:hunter2@10.0.0.1:9093', FutureWarning)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    records = [json.loads(x) for x in out.stderr.splitlines() if x.strip()]
    assert len(records) == 1, out.stderr
    assert (records[0]["level"], records[0]["logger"]) == ("WARNING", "py.warnings")
    assert "FutureWarning: deprecated" in records[0]["message"]
    assert "hunter2" not in out.stderr
