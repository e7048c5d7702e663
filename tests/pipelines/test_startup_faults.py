"""Start-up faults: each is one line naming the setting, exit 2, no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from tests.pipelines.test_score_stage import calibrate
from tests.pipelines.test_score_stage import tiny_ckpt as tiny_ckpt  # fixture

EXE = str(Path(sys.executable).with_name("posewatch"))


def _children(pid: int) -> dict[int, str]:
    """pid -> command name of the processes whose parent is ``pid``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            out[int(d.name)] = name
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _write(tmp: Path, data: dict[str, object]) -> Path:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_check_names_the_fault(tmp_path: Path) -> None:
    runner = CliRunner()
    cases: list[tuple[Path, str]] = []
    missing = _write(tmp_path, {"cameras": {"a": {"source": "a.mp4"}},
                                "forecaster": {"checkpoint": str(tmp_path / "nope.pt")}})  # fmt: skip
    cases.append(
        (missing, "forecaster.checkpoint: " + str(tmp_path / "nope.pt") + " does not exist")
    )
    dup = tmp_path / "dup.yaml"
    dup.write_text("cameras:\n  gate: {source: a.mp4}\n  gate: {source: b.mp4}\n")
    cases.append((dup, "key 'gate' appears twice in one mapping (line 3)"))
    cases.append((tmp_path, "not a file (a folder?)"))
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("cameras:\n  caf\xe9: {source: a.mp4}\n".encode("latin-1"))
    cases.append((latin, "not UTF-8 text (byte 14)"))
    for path, want in cases:
        res = runner.invoke(app, ["config", "check", str(path)])
        assert res.exit_code == 2, (path, res.output)
        assert want in res.output and "Traceback" not in res.output


def test_missing_checkpoint_fails_in_one_line_and_starts_no_broker(tmp_path: Path) -> None:
    cfg = _write(tmp_path, {"cameras": {"a": {"source": "a.mp4"}},
                            "forecaster": {"checkpoint": str(tmp_path / "gone.pt")},
                            "metrics": {"enabled": False}})  # fmt: skip
    proc = subprocess.run([EXE, "run", "--config", str(cfg)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2
    err = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and "gone.pt: no such checkpoint" in err[0]
    assert "Traceback" not in proc.stderr


def test_metrics_port_in_use_is_one_line_exit_2(tiny_ckpt: Path, tmp_path: Path) -> None:
    calibrate(tiny_ckpt, 1.0, samples=42)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cfg = _write(tmp_path, {
            "cameras": {"a": {"source": "a.mp4"}},
            "forecaster": {"checkpoint": str(tiny_ckpt)},
            "kafka": {"bootstrap_servers": ["127.0.0.1:9"], "spool_dir": str(tmp_path / "sp")},
            "metrics": {"port": port},
        })  # fmt: skip
        proc = subprocess.run([EXE, "run", "--config", str(cfg)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: metrics: cannot listen on 127.0.0.1:{port} (Address already in use)" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


@pytest.mark.broker
def test_a_killed_service_leaves_no_broker_behind(tiny_ckpt: Path, tmp_path: Path) -> None:
    calibrate(tiny_ckpt, 1.0, samples=42)
    cfg = _write(tmp_path, {
        "cameras": {"a": {"source": str(tmp_path / "later.mp4")}},
        "forecaster": {"checkpoint": str(tiny_ckpt)},
        "kafka": {"spool_dir": str(tmp_path / "sp")},  # no servers: the embedded broker
        "metrics": {"enabled": False},
    })  # fmt: skip
    proc = subprocess.Popen([EXE, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "YOLO_OFFLINE": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        broker: list[int] = []
        while time.monotonic() < deadline and not broker:
            broker = [p for p, n in _children(proc.pid).items() if "tansu" in n]
            time.sleep(0.1)
        assert broker, "the embedded broker did not start"
        proc.send_signal(signal.SIGKILL)  # no shutdown step runs
        proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(broker[0]):
            time.sleep(0.1)
        assert not _alive(broker[0]), "the broker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("command", ["score", "detect"])
def test_an_unreachable_broker_at_start_is_one_line_exit_2(
    tiny_ckpt: Path, tmp_path: Path, command: str
) -> None:
    calibrate(tiny_ckpt, 1.0, samples=42)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens
    cfg = _write(tmp_path, {
        "cameras": {"a": {"source": str(tmp_path / "later.mp4")}},
        "forecaster": {"checkpoint": str(tiny_ckpt)},
        "kafka": {"bootstrap_servers": [f"127.0.0.1:{port}"], "spool_dir": str(tmp_path / "sp")},
        "metrics": {"enabled": False},
        "ui": {"enabled": False},
    })  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run([EXE, command, "--config", str(cfg)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "YOLO_OFFLINE": "1"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1 and f"kafka: cannot connect to 127.0.0.1:{port}" in err[0]
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 60
