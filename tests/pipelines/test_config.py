import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cameras import source_config
from pipelines.cli import app
from pipelines.config import ConfigError, PosewatchConfig, json_schema, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "posewatch.example.yaml"
runner = CliRunner()


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATE_CAMERA_USER", "admin")
    monkeypatch.setenv("GATE_CAMERA_PASSWORD", "s3cret")
    # `config check` also checks that the model file exists: the example's runs/model.pt,
    # relative to where posewatch runs.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "model.pt").write_bytes(b"")
    cfg = load_config(EXAMPLE)
    assert set(cfg.cameras) == {"lawn", "gate"}
    assert cfg.cameras["gate"].source == "rtsp://admin:s3cret@10.0.0.5:554/stream1"
    assert not cfg.cameras["gate"].enabled and cfg.cameras["gate"].roi == (0, 200, 1920, 1080)
    assert source_config(cfg, "gate").detect_fps == 30  # a 60 fps camera's every other frame
    assert source_config(cfg, "lawn").detect_fps is None
    res = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert res.exit_code == 0 and "2 cameras, 1 enabled: lawn" in res.output


def test_demo_config_is_valid_and_cold_starts() -> None:
    cfg = load_config(REPO / "config" / "demo.yaml")
    assert cfg.forecaster.checkpoint is None  # the demo learns its scene first
    assert cfg.cameras["lawn"].loop and cfg.cold_start.learn_minutes * 60 < 795 / 10
    assert cfg.kafka.bootstrap_servers == []  # embedded broker


def test_invalid_config_reports_every_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "cameras:\n"
        "  gate: {source: a.mp4, fps: -3, detect_fps: 0, colour: red}\n"
        "  'bad name!': {source: b.mp4}\n"
        "detector: {imgsz: 10}\n"
        "kafka: {security_protocol: SASL_SSL}\n"
        "alerts: {}\n"
    )
    res = runner.invoke(app, ["config", "check", str(bad)])
    assert res.exit_code == 2
    for path in (
        "cameras.gate.fps",
        "cameras.gate.detect_fps",
        "cameras.gate.colour",
        "detector.imgsz",
        "kafka",
        "alerts",
    ):
        assert path in res.output, (path, res.output)
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert len(info.value.problems) >= 6


def test_missing_file_bad_yaml_and_missing_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["config", "check", str(tmp_path / "none.yaml")]).exit_code == 2
    y = tmp_path / "y.yaml"
    y.write_text("cameras: [unclosed\n")
    res = runner.invoke(app, ["config", "check", str(y)])
    assert res.exit_code == 2 and "not valid YAML" in res.output
    monkeypatch.delenv("GATE_CAMERA_PASSWORD", raising=False)
    monkeypatch.setenv("GATE_CAMERA_USER", "admin")
    res = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert (
        res.exit_code == 2
        and "cameras.gate.source: environment variable GATE_CAMERA_PASSWORD is not set"
        in res.output
    )


def test_secrets_from_files_are_never_shown(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    cfg = load_config(
        data={
            "cameras": {"c": {"source": "x.mp4"}},
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": f"file:{secret}",
            },
        }
    )
    assert cfg.kafka.sasl_password is not None
    assert cfg.kafka.sasl_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(cfg) and "hunter2" not in cfg.model_dump_json()


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSEWATCH_KAFKA__TOPIC", "site7.alerts")
    monkeypatch.setenv("POSEWATCH_METRICS__PORT", "9200")
    cfg = load_config(
        data={"cameras": {"c": {"source": "x.mp4"}}, "kafka": {"topic": "file.topic"}}
    )
    assert cfg.kafka.topic == "site7.alerts" and cfg.metrics.port == 9200


def test_schema_has_a_title_and_description_on_every_field() -> None:
    schema = json_schema()
    missing = []
    for name, model in schema["$defs"].items():
        for field, spec in model.get("properties", {}).items():
            if "title" not in spec or "description" not in spec:
                missing.append(f"{name}.{field}")
    for field, spec in schema["properties"].items():
        if "description" not in spec:
            missing.append(field)
    assert not missing, missing
    res = runner.invoke(app, ["config", "schema"])
    assert res.exit_code == 0 and json.loads(res.output)["title"] == "PosewatchConfig"
    assert PosewatchConfig.model_config.get("extra") == "forbid"


def test_secrets_given_in_posewatch_variables_are_never_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from detector.redaction import redact

    url = "rtsp://127.0.0.1:1/live/EnvPathToken8812"  # a token in the path: no pattern sees it
    monkeypatch.setenv("POSEWATCH_CAMERAS__GATE__SOURCE", url)
    monkeypatch.setenv("POSEWATCH_METRICS__PORT", "9311")
    cfg = load_config(data={"cameras": {"gate": {"source": "placeholder.mp4"}}})
    assert cfg.cameras["gate"].source == url and cfg.metrics.port == 9311
    line = f"camera 'gate' ({url}): reconnecting (cannot open {url}; retrying in 2 s)"
    assert "EnvPathToken8812" not in redact(line)
    assert "9311" in redact("metrics on port 9311")  # a number is no secret


def test_a_file_url_is_a_source_not_a_secret_reference_and_a_bad_home_is_clear(
    tmp_path: Path,
) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\\x00")
    cfg = load_config(data={"cameras": {"c": {"source": f"file://{video}"}}})
    assert cfg.cameras["c"].source == f"file://{video}"
    with pytest.raises(ConfigError) as err:
        load_config(
            data={
                "cameras": {"c": {"source": "x.mp4"}},
                "kafka": {"sasl_password": "file:~no_such_user_posewatch/pw"},
            }
        )
    assert "kafka.sasl_password" in str(err.value) and "'~'" in str(err.value)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path: Path, value: str) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(f"cameras: {{c: {{source: x.mp4}}}}\nalerting: {{threshold: {value}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(y)
    assert "alerting.threshold" in str(err.value)


def test_the_early_stop_margin_is_auto_a_number_or_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """auto (the scorer's own margin) by default; a number in the scorer's units, from the
    file or the environment; null draws all K; anything else is refused naming the field."""
    base = {"cameras": {"c": {"source": "x.mp4"}}}
    assert load_config(data=base).forecaster.early_stop_margin == "auto"
    for given, want in (("auto", "auto"), (2.5, 2.5), (0, 0.0), (None, None)):
        cfg = load_config(data={**base, "forecaster": {"early_stop_margin": given}})
        assert cfg.forecaster.early_stop_margin == want
    monkeypatch.setenv("POSEWATCH_FORECASTER__EARLY_STOP_MARGIN", "4.5")
    assert load_config(data=base).forecaster.early_stop_margin == 4.5
    monkeypatch.delenv("POSEWATCH_FORECASTER__EARLY_STOP_MARGIN")
    for bad in ("-1", "fast", ".nan"):
        y = tmp_path / "c.yaml"
        y.write_text(f"cameras: {{c: {{source: x.mp4}}}}\nforecaster: {{early_stop_margin: {bad}}}\n")  # fmt: skip
        with pytest.raises(ConfigError) as err:
            load_config(y)
        assert "forecaster.early_stop_margin" in str(err.value), bad
