"""Hostile or mistaken inputs get one clear line (CLI: ``error: ...`` on stderr, no
traceback), and a malformed file is refused without being changed: undecodable Kafka
records, an unreachable broker, JSON nested 100,000 deep, a folder given as an output file,
a checkpoint without training settings, another program's SQLite file as the alert store."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from detector.posefiles import PoseFileError, decode_poseframe, iter_jsonl, read_stgnf
from pipelines.cli import app, record_text
from pipelines.config import PosewatchConfig
from pipelines.serving import RuntimeConfigError
from pipelines.sinks import build_sinks
from pipelines.sinks.store import AlertStore, StoreError, StoreSink
from tests.conftest import tiny_checkpoint
from tests.web.helpers import episode

runner = CliRunner()
DEEP = "[" * 100_000 + "]" * 100_000


def one_line_error(res: Result, code: int = 2) -> str:
    """The single ``error:`` line of a failed command (no traceback)."""
    assert res.exit_code == code, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def a_store(path: Path) -> Path:
    """A real alert store holding one episode."""
    sink = StoreSink(path)
    for alerts, view in episode():
        for a in alerts:
            sink.publish(a, view)
        sink.frame(view)
    sink.close()
    return path


# -- 1. posewatch consume -----------------------------------------------------------------
def test_record_text_shows_any_bytes_and_a_missing_value_on_one_line() -> None:
    assert record_text(b"\xff\xfe") == "\\xff\\xfe"
    assert record_text(b"") == ""
    assert record_text(None) == "<null>"
    assert record_text(None, null="") == ""
    assert record_text('{"camera": "gäte"}'.encode()) == '{"camera": "gäte"}'
    assert record_text(b"a\nb\rc") == "a\\nb\\rc"  # one line per record


def test_consume_of_an_unreachable_broker_is_one_line_and_exit_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "consume", "--bootstrap", "127.0.0.1:1",
         "--connect-timeout", "1", "--idle-timeout", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: cannot reach the Kafka broker at 127.0.0.1:1 within 1 s (KafkaTimeoutError); "
        "check --bootstrap and that the broker runs"
    ]
    assert out.stdout == ""


def test_consume_of_a_bootstrap_that_is_not_host_port_is_one_line() -> None:
    res = runner.invoke(app, ["consume", "--bootstrap", "127.0.0.1:http"])
    assert "--bootstrap '127.0.0.1:http'" in one_line_error(res)


@pytest.mark.broker
def test_consume_prints_dead_letters_that_are_not_text() -> None:
    from kafka import KafkaProducer

    from pipelines.broker import EmbeddedBroker
    from pipelines.kafka_util import ensure_topic

    topic = "posewatch.poses.dlq"
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, topic)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for key, value in ((b"cam0", b"\xff\xfe{"), (b"\xff", b""), (b"cam1", None)):
            producer.send(topic, key=key, value=value)
        producer.flush()
        producer.close()
        res = runner.invoke(
            app,
            ["consume", "--bootstrap", broker.bootstrap, "--topic", topic, "--max-messages",
             "3", "--idle-timeout", "20"],
        )  # fmt: skip
    assert res.exit_code == 0, (res.output, res.exception)
    assert res.stdout.splitlines() == ["cam0\t\\xff\\xfe{", "\\xff\t", "cam1\t<null>"]


# -- 2. JSON nested deeper than Python recurses ---------------------------------------------
def test_data_summary_refuses_a_pose_file_nested_100000_deep(tmp_path: Path) -> None:
    bad = tmp_path / "pose" / "train" / "x.json"
    bad.parent.mkdir(parents=True)
    (tmp_path / "gt").mkdir()
    bad.write_text(DEEP)
    with pytest.raises(PoseFileError, match=r"x\.json: invalid JSON \(.*nested too deeply"):
        read_stgnf(bad)
    res = runner.invoke(app, ["data", "summary", str(tmp_path)])
    line = one_line_error(res, code=1)
    assert str(bad) in line and "nested too deeply" in line


def test_a_jsonl_line_or_message_nested_100000_deep_is_a_malformed_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text("\n" + DEEP + "\n")
    with pytest.raises(PoseFileError, match=r"x\.jsonl, line 2: invalid JSON \(.*too deeply"):
        list(iter_jsonl(bad))
    with pytest.raises(PoseFileError, match=r"poses\[0\]@7: invalid JSON \(.*too deeply"):
        decode_poseframe(DEEP.encode(), "poses[0]@7")


# -- 3. alerts export --out FOLDER ---------------------------------------------------------
def test_alerts_export_to_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    db = a_store(tmp_path / "alerts.db")
    folder = tmp_path / "exports"
    folder.mkdir()
    res = runner.invoke(app, ["alerts", "export", "--store", str(db), "--out", str(folder)])
    line = one_line_error(res)
    assert f"--out {folder} is a folder" in line and "give a file name" in line
    assert list(folder.iterdir()) == []
    gone = tmp_path / "no" / "such" / "folder" / "a.csv"
    res = runner.invoke(app, ["alerts", "export", "--store", str(db), "--out", str(gone)])
    assert f"--out {gone}: cannot write (No such file or directory)" in one_line_error(res)
    ok = runner.invoke(app, ["alerts", "export", "--store", str(db), "--out", str(folder / "a")])
    assert ok.exit_code == 0, ok.output
    assert (folder / "a").read_text().count("\n") == 2  # header + the episode


# -- 4. a checkpoint without training settings -----------------------------------------------
def test_posture_and_ensemble_refuse_a_checkpoint_without_train_config(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "x.pt")  # save_checkpoint without a TrainConfig
    before = ckpt.read_bytes()
    res = runner.invoke(app, ["posture", "--model", str(ckpt)])
    line = one_line_error(res, code=1)
    assert f"{ckpt}: has no training settings (train_config)" in line
    assert "`posewatch posture` needs them" in line and "`posewatch train`" in line
    res = runner.invoke(app, ["posture", "--model", str(ckpt), "--data", str(tmp_path)])
    assert "has no training settings (train_config)" in one_line_error(res, code=1)
    out = tmp_path / "e.pt"
    res = runner.invoke(
        app, ["ensemble", "--model", str(ckpt), "--model", str(ckpt), "--out", str(out)]
    )
    line = one_line_error(res, code=1)
    assert "has no training settings (train_config)" in line and "`posewatch ensemble`" in line
    assert not out.exists() and ckpt.read_bytes() == before


# -- 5. alerts list on a file that is not an alert store ----------------------------------------
def test_a_file_that_is_not_an_alert_store_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    foreign = tmp_path / "other.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path, why in ((foreign, "no schema_version table"), (empty, "an empty file")):
        before = path.read_bytes()
        with pytest.raises(StoreError, match=f"{path.name} is not a posewatch alert store"):
            AlertStore(path, create=False)
        res = runner.invoke(app, ["alerts", "list", "--store", str(path)])
        line = one_line_error(res)
        assert f"{path} is not a posewatch alert store ({why})" in line
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [
            path.name
        ]  # no -wal / -shm beside it
    db = a_store(tmp_path / "alerts.db")
    res = runner.invoke(app, ["alerts", "list", "--store", str(db)])
    assert res.exit_code == 0 and "1 of 1 episodes" in res.output, res.output


# -- 6. unusable output paths at start-up ------------------------------------------------------
def _sinks(tmp_path: Path, **outputs: str | None) -> None:
    cfg = PosewatchConfig.model_validate(
        {"cameras": {"a": {"source": "a.mp4"}}, "outputs": {"store": None, **outputs}}
    )
    build_sinks(cfg)


def test_an_unusable_output_path_names_its_setting(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(RuntimeConfigError, match=r"^outputs\.alerts_jsonl: cannot open .*folder"):
        _sinks(tmp_path, alerts_jsonl=str(folder))
    with pytest.raises(RuntimeConfigError, match=r"^outputs\.alerts_jsonl: cannot open /proc/"):
        _sinks(tmp_path, alerts_jsonl="/proc/nope/alerts.jsonl")
    with pytest.raises(RuntimeConfigError, match=r"^outputs\.scores_jsonl: cannot open"):
        _sinks(tmp_path, alerts_jsonl=None, scores_jsonl=str(folder))
    with pytest.raises(RuntimeConfigError, match=r"^outputs\.store: alert store .*out"):
        _sinks(tmp_path, alerts_jsonl=None, store=str(folder))
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    with pytest.raises(RuntimeConfigError, match=r"^outputs\.snapshots: .* is a file, not a"):
        _sinks(tmp_path, alerts_jsonl=str(tmp_path / "a.jsonl"), snapshots=str(a_file))
    # The store defaults beside the JSONL file: its error says so.
    cfg = PosewatchConfig.model_validate(
        {"cameras": {"a": {"source": "a.mp4"}}, "outputs": {"alerts_jsonl": "/proc/no/a.jsonl"}}
    )
    with pytest.raises(StoreError, match=r"outputs\.store defaults to alerts\.db beside"):
        build_sinks(cfg)
