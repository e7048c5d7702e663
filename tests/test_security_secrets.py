"""Secrets never leak: 18 secrets in every form the configuration accepts (inline, ``${ENV}``,
``file:``, a ``POSEWATCH_*`` override; RTSP / HTTP user info with reserved characters,
secret-named query parameters, the SASL password) go through `posewatch config check`
(valid and invalid files), `posewatch run` (cameras failing and reconnecting against a
refused 127.0.0.1 port, a broker refusing the SASL login), the metrics, the run summary,
the alerts and the spool; none appears in any log record, any stdout / stderr, the
/metrics body or any file written."""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from detector.redaction import redact
from pipelines.broker import free_port
from pipelines.config import load_config
from pipelines.spool import DiskSpool
from tests.security_support import (
    metric,
    service_config,
    start_service,
    tiny_checkpoint,
    walking_frames,
)

EXE = str(Path(sys.executable).with_name("posewatch"))


class Secrets:
    """The secrets, where each one is configured, and the files and variables that hold
    them (under ``root``)."""

    def __init__(self, root: Path):
        p = free_port()  # nothing listens there: every camera is refused and reconnects
        h = f"127.0.0.1:{p}"
        self.root = root
        self.values: dict[str, str] = {
            "inline userinfo with / and #": "Rtsp9/Inl1ne#Sl4sh",
            "env URL, userinfo with @ and :": "EnvUser@AtSign:Colon9",
            "env password with ? and &": "PwQ1x?Query2&Amper3",
            "file: URL, userinfo with %40": "FileS3g/Secr3tF%40Pct9",
            "query token": "TokQuery9f8e7d",
            "http query password": "QueryPassw0rd",
            "query api_key": "ApiKey-77xx",
            "query auth before #": "AuthZ-abc123",
            "user info without password": "UserOnlyToken8899",
            "query pwd": "Pwd-short1",
            "query secret": "Secr3t-Param",
            "query passwd (http basic too)": "Passwd-Basic55",
            "sasl_password inline": "SaslInline-Pw1",
            "sasl_password ${ENV}": "SaslEnv/Pw#2",
            "sasl_password file:": "SaslFile:Pw@3",
            "sasl_password POSEWATCH_ override": "SaslOverride-Pw4",
            "env token in the URL path (UniFi Protect)": "PathTok3n9Zq",
            "query jwt": "Jwt-eyJhbGc1",
        }
        v = self.values
        self.env = {
            "CAM_URL": f"rtsp://admin:{v['env URL, userinfo with @ and :']}@{h}/b",
            "CAM_PW": v["env password with ? and &"],
            "SASL_PW": v["sasl_password ${ENV}"],
            "UNIFI_TOKEN": v["env token in the URL path (UniFi Protect)"],
        }
        (root / "secrets").mkdir(parents=True, exist_ok=True)
        self.cam_file = root / "secrets" / "cam_url"
        self.cam_file.write_text(f"rtsp://ops:{v['file: URL, userinfo with %40']}@{h}/d\n")
        self.sasl_file = root / "secrets" / "sasl_pw"
        self.sasl_file.write_text(v["sasl_password file:"] + "\n")
        self.cameras = {
            "inline": f"rtsp://admin:{v['inline userinfo with / and #']}@{h}/a",
            "env_url": "${CAM_URL}",
            "env_pw": f"rtsp://viewer:${{CAM_PW}}@{h}/c",
            "file_url": f"file:{self.cam_file}",
            "token": f"rtsp://{h}/e?token={v['query token']}",
            "http_pw": f"http://{h}/f.mjpg?user=me&password={v['http query password']}",
            "apikey": f"rtsp://{h}/g?api_key={v['query api_key']}&fps=5",
            "auth": f"rtsp://{h}/h?auth={v['query auth before #']}#frag",
            "useronly": f"rtsp://{v['user info without password']}@{h}/i",
            "params": f"rtsp://{h}/j?pwd={v['query pwd']}&secret={v['query secret']}",
            "basic": f"http://cam:{v['query passwd (http basic too)']}@{h}/k?passwd="
            f"{v['query passwd (http basic too)']}",
            "unifi": f"rtsps://{h}/${{UNIFI_TOKEN}}?enableSrtp",
            "jwt": f"rtsp://{h}/m?jwt={v['query jwt']}",
        }

    def camera_section(self) -> dict[str, Any]:
        return {
            name: {"source": src, "retry_interval": 0.2, "max_backoff": 0.5,
                   "no_frame_timeout": 1.0}
            for name, src in self.cameras.items()
        }  # fmt: skip

    def kafka(self, form: str) -> dict[str, Any]:
        """SASL settings with the password given ``inline``, by ``env`` or by ``file``."""
        pw = {
            "inline": self.values["sasl_password inline"],
            "env": "${SASL_PW}",
            "file": f"file:{self.sasl_file}",
        }[form]
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "posewatch",
            "sasl_password": pw,
            "spool_dir": str(self.root / "out" / "spool"),
        }

    def environ(self) -> dict[str, str]:
        env = {**os.environ, **self.env, "YOLO_OFFLINE": "1"}
        env["POSEWATCH_KAFKA__SASL_PASSWORD"] = self.values["sasl_password POSEWATCH_ override"]
        return env

    def leaks(self, text: str | bytes, where: str) -> list[str]:
        """``where: label`` for every secret found in ``text``, as it is or base64-encoded
        (the spool stores messages in base64) at any of the three byte alignments."""
        data = text.encode() if isinstance(text, str) else text
        return [f"{where}: {k}" for k, s in self.values.items()
                if any(form in data for form in _forms(s.encode()))]  # fmt: skip

    def leaks_in_files(self, folder: Path) -> list[str]:
        out = []
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                out += self.leaks(f.read_bytes(), str(f.relative_to(folder)))
        return out


def _forms(secret: bytes) -> list[bytes]:
    """``secret``, each of its pieces between reserved URL characters that is 5 characters
    or longer (a half-redacted password leaks those), and the part of its base64 encoding
    that depends on it alone, after 0, 1 or 2 bytes of anything."""
    out = [secret, *(x for x in re.split(rb"[/#@:?&%=;]", secret) if len(x) >= 5)]
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + secret)
        first, end = -(-8 * k // 6), (8 * k + 8 * len(secret)) // 6
        out.append(enc[first:end])
    return out


def _write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_redact_removes_every_credential_form() -> None:
    cases = {
        "rtsp://admin:Rtsp/Env#Slash@host:8554/x": "rtsp://***@host:8554/x",
        "rtsp://u:a@b:c/d?e#f@10.0.0.5/live": "rtsp://***@10.0.0.5/live",
        "rtsp://u:p%2Fq@cam/s": "rtsp://***@cam/s",
        "rtsp://tokenonly@cam/s": "rtsp://***@cam/s",
        "http://cam/x?user=a&password=b&fps=5": "http://cam/x?user=a&password=***&fps=5",
        "http://cam/x?passwd=b": "http://cam/x?passwd=***",
        "http://cam/x?pwd=b;c": "http://cam/x?pwd=***",
        "http://cam/x?access_token=b#frag": "http://cam/x?access_token=***",
        "http://cam/x?API_KEY=b": "http://cam/x?API_KEY=***",
        "http://cam/x?Secret=b&auth=c": "http://cam/x?Secret=***&auth=***",
        "open rtsp://u:p/#@h/x failed; rtsp://v:w@g/y too": "open rtsp://***@h/x failed; "
        "rtsp://***@g/y too",
        "rtsp://cam.local:554/stream1?channel=2": "rtsp://cam.local:554/stream1?channel=2",
        "/videos/gate.mp4": "/videos/gate.mp4",
        "0": "0",
    }
    for raw, want in cases.items():
        assert redact(raw) == want, raw
    assert sum(redact(r) != r for r in cases) == 11


def test_config_check_never_echoes_a_secret(tmp_path: Path) -> None:
    sec = Secrets(tmp_path)
    env = sec.environ()
    outputs: list[str] = []
    for form in ("inline", "env", "file"):
        cfg = _write(tmp_path / f"{form}.yaml",
                     {"cameras": sec.camera_section(), "kafka": sec.kafka(form)})  # fmt: skip
        p = subprocess.run([EXE, "config", "check", str(cfg)], capture_output=True, text=True,
                           env=env, timeout=60)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "valid (13 cameras, 13 enabled" in p.stdout
        outputs += [p.stdout, p.stderr]
    # Invalid files: a YAML error on the line of a secret, validation errors next to secrets.
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(
        "cameras:\n  gate:\n    source: " + sec.cameras["inline"] + "\nkafka:\n"
        f"  sasl_password: {sec.values['sasl_password inline']}: x\n"
    )
    bad_fields = _write(tmp_path / "fields.yaml", {
        "cameras": {**sec.camera_section(), "bad": {"source": sec.cameras["token"],
                                                     "roi": [5, 5, 1, 1]}},
        "kafka": {**sec.kafka("env"), "security_protocol": "SASL_SSL", "sasl_username": None,
                  "spool_max_mb": "${SASL_PW}"},
        "metrics": {"port": sec.cameras["useronly"]},
    })  # fmt: skip
    for cfg, errors in ((bad_yaml, 1), (bad_fields, 3)):
        p = subprocess.run([EXE, "config", "check", str(cfg)], capture_output=True, text=True,
                           env=env, timeout=60)  # fmt: skip
        assert p.returncode == 2, p.stdout
        assert f"{errors} configuration error(s)" in p.stderr, p.stderr
        outputs += [p.stdout, p.stderr]
    assert "line 5, column" in outputs[-3]  # the YAML error says where, not what
    leaks = [x for i, out in enumerate(outputs) for x in sec.leaks(out, f"output {i}")]
    assert leaks == []


@pytest.mark.broker
def test_run_cli_with_failing_cameras_leaks_no_secret(tmp_path: Path) -> None:
    """`posewatch run` as a process: 13 cameras refused and reconnecting, the broker
    refusing the SASL login; its stdout and stderr (C libraries included), its /metrics
    and every file it writes hold no secret."""
    sec = Secrets(tmp_path)
    out = tmp_path / "out"
    ckpt = tiny_checkpoint(tmp_path / "model" / "tiny.pt")
    mport = free_port()
    cfg = service_config(
        out,
        ckpt,
        cameras=sec.camera_section(),
        detector={"backend": "torch", "imgsz": 320, "device": "cpu"},
        kafka=sec.kafka("env"),
        metrics={"enabled": True, "port": mport},
        outputs={"alerts_jsonl": str(out / "alerts.jsonl"), "scores_jsonl": str(out / "s.jsonl"),
                 "snapshots": str(out / "snap")},
    )  # fmt: skip
    del cfg["cameras"]["gate"]
    path = _write(tmp_path / "run.yaml", cfg)
    env = sec.environ()
    proc = subprocess.Popen(
        [EXE, "run", "--config", str(path), "--max-seconds", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    body = ""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/x", timeout=2).read()
            except OSError:
                time.sleep(0.5)
                continue
            if metric_sum(body.decode(), "posewatch_camera_reconnects_total") >= 26:
                proc.terminate()  # enough reconnects seen: a graceful stop (SIGTERM)
                break
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = body.decode() if isinstance(body, bytes) else body
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert metric_sum(text, "posewatch_camera_reconnects_total") >= 26, text[-2000:]
    err = stderr.decode()
    assert err.count("retrying in") >= 13  # every camera logged its reconnects
    assert all(f"camera {c!r}" in err for c in sec.cameras)  # each camera's own lines
    assert "frames: none" in stdout.decode()  # the run summary
    leaks = sec.leaks(stdout, "stdout") + sec.leaks(stderr, "stderr")
    leaks += sec.leaks(text, "/metrics") + sec.leaks_in_files(out)
    assert leaks == []


def metric_sum(body: str, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets)."""
    return sum(float(x.split()[-1]) for x in body.splitlines()
               if x.startswith(name + "{") or x.startswith(name + " "))  # fmt: skip


@pytest.mark.broker
def test_alerts_spool_metrics_summary_and_logs_hold_no_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The `run` service in process (no pose model: synthetic poses of camera ``inline``),
    every camera reconnecting, alerts written to JSONL, scores, snapshots, the alert store
    and the Kafka spool (the broker refuses the SASL login, so they stay there)."""
    import torch

    from pipelines.run_service import Service

    torch.set_num_threads(1)
    caplog.set_level(logging.DEBUG)
    sec = Secrets(tmp_path)
    for k, v in sec.environ().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    ckpt = tiny_checkpoint(tmp_path / "model" / "tiny.pt")
    cfg = service_config(
        out,
        ckpt,
        cameras=sec.camera_section(),
        kafka={**sec.kafka("file"), "bootstrap_servers": []},  # the embedded broker
        metrics={"enabled": True, "port": 0},
        outputs={"alerts_jsonl": str(out / "alerts.jsonl"), "scores_jsonl": str(out / "s.jsonl"),
                 "snapshots": str(out / "snap")},
    )  # fmt: skip
    del cfg["cameras"]["gate"]
    service = Service(load_config(_write(tmp_path / "run.yaml", cfg)))
    start_service(service, skip=("init_detector",))
    try:
        service.handle_poses(walking_frames("inline"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            service.housekeeping()
            body = service.metrics.render().decode()
            if metric_sum(body, "posewatch_camera_reconnects_total") >= 26 and metric(
                body, "posewatch_publish_errors_total"
            ):
                break
            time.sleep(0.3)
        http = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics",
                                      timeout=5).read()  # fmt: skip
    finally:
        service.shutdown()
    s = service.summary
    assert metric_sum(http.decode(), "posewatch_camera_reconnects_total") >= 26
    assert metric(http.decode(), "posewatch_publish_errors_total") >= 1
    assert len(s.camera_errors) + sum("retrying in" in r.getMessage() for r in caplog.records) > 0
    alerts = (out / "alerts.jsonl").read_text().splitlines()
    assert len(alerts) >= 4 and not s.delivered
    store = getattr(service.cfg.outputs, "store", None)  # the alert store, when there is one
    assert store is None or Path(store).stat().st_size > 0
    assert DiskSpool(out / "spool").pending() == len(alerts)  # they wait in the spool
    assert sec.leaks(base64.b64encode(b"x" + sec.values["query token"].encode()), "self") != []
    logs = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    assert "refused SASL mechanism PLAIN" in logs
    captured = capfd.readouterr()
    leaks = sec.leaks(logs, "logs") + sec.leaks(captured.out, "stdout")
    leaks += sec.leaks(captured.err, "stderr") + sec.leaks(http, "/metrics")
    leaks += sec.leaks(repr(s), "summary") + sec.leaks_in_files(out)
    assert leaks == []


def test_cli_summary_lines_hold_no_secret(tmp_path: Path) -> None:
    """`run --source URL` with a refused stream and a config error: the lines it prints."""
    from pipelines.cli import app

    sec = Secrets(tmp_path)
    res = CliRunner().invoke(app, ["run", "--source", sec.cameras["inline"], "--model",
                                   str(tmp_path / "none.pt")])  # fmt: skip
    assert res.exit_code == 2 and "none.pt" in res.output
    assert sec.leaks(res.output, "output") == []
