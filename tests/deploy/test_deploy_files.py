"""The deploy files are right without a Docker engine: they parse, their PromQL names metrics
a live `posewatch run` exports, and compose / Kubernetes / config agree with the code."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli import app
from pipelines.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
METRIC = re.compile(r"\bposewatch_[a-z0-9_]+\b")


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_and_json_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 12
    for f in files:
        assert yaml_docs(f), f
    dashboards = sorted(DEPLOY.rglob("*.json"))
    assert dashboards
    for f in dashboards:
        json.loads(f.read_text())


def promql_expressions() -> list[str]:
    rules = yaml_docs(DEPLOY / "prometheus" / "rules.yml")[0]
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "posewatch.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs


def test_rules_and_dashboard_cover_what_operators_need() -> None:
    rules = yaml_docs(DEPLOY / "prometheus" / "rules.yml")[0]
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    for want in ("CameraOffline", "NoFrames", "PublishErrors", "SpoolGrowing", "ConsumerLag"):
        assert any(want in n for n in names), want
    text = " ".join(promql_expressions())
    for metric in (
        "posewatch_frames_processed_total",
        "posewatch_persons_tracked",
        "posewatch_anomaly_score_bucket",
        "posewatch_alerts_total",
        "posewatch_stage_latency_seconds_bucket",
        "posewatch_camera_up",
        "posewatch_consumer_lag",
    ):
        assert metric in text, metric


@pytest.mark.slow
def test_every_promql_metric_is_exported_by_a_live_service(
    videos: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    from pipelines.run_service import Service

    cfg = load_config(
        data={
            "cameras": {"lawn": {"source": str(videos / "vtest.avi")}},
            "forecaster": {"checkpoint": str(trained_checkpoint)},
            "alerting": {"threshold": -100.0},
            "kafka": {"spool_dir": str(tmp_path / "spool")},
            "metrics": {"port": 0},
        }
    )
    svc = Service(cfg)
    th = threading.Thread(target=lambda: svc.run(max_seconds=120))
    th.start()
    body = ""
    try:
        deadline = time.monotonic() + 110
        while time.monotonic() < deadline:
            time.sleep(1)
            if svc.metrics_port is None:
                continue
            url = f"http://127.0.0.1:{svc.metrics_port}/metrics"
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'posewatch_alerts_total{camera="lawn",type="new"}' in body:
                break
    finally:
        svc.stop()
        th.join(60)
    exported = set()
    for line in body.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            exported.add(line.split()[2])
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    assert 'posewatch_alerts_total{camera="lawn",type="new"}' in body
    used = {m for e in promql_expressions() for m in METRIC.findall(e)}
    assert len(used) >= 12
    missing = sorted(m for m in used if m not in exported)
    assert not missing, missing


def test_compose_kubernetes_and_config_agree_with_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAMERA_USER", "u")
    monkeypatch.setenv("CAMERA_PASSWORD", "p")
    cfg = load_config(DEPLOY / "posewatch.yaml")  # every key is a real config field
    port = cfg.metrics.port
    assert cfg.metrics.host == "0.0.0.0" and cfg.kafka.bootstrap_servers == ["kafka:9092"]
    import typer.main

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    compose = yaml_docs(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    images = set()
    pw = {n: s for n, s in services.items() if n in ("detect", "score-a", "score-b")}
    assert len([n for n in pw if n.startswith("score")]) == 2
    for svc in pw.values():
        images.add(svc.get("image") or compose["x-posewatch"]["image"])
        cmd = svc["command"]
        assert cmd[0] in commands and cmd[1:] == ["--config", "/etc/posewatch/posewatch.yaml"]
        assert any(
            v.startswith("./posewatch.yaml:/etc/posewatch/posewatch.yaml") for v in svc["volumes"]
        )
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft
    init = " ".join(services["kafka-init"]["command"])
    for topic in (cfg.kafka.poses_topic, cfg.kafka.topic, cfg.kafka.dead_letter_topic):
        assert topic in init, topic
    prom = yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")[0]
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{n}:{port}" for n in pw)
    docker = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in docker and f"127.0.0.1:{port}/metrics" in docker
    assert "USER posewatch" in docker and "FROM nvidia/cuda" in docker

    k8s = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml_docs(f)]
    kinds = {d["kind"] for d in k8s}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "ServiceMonitor"} <= kinds
    assert "HorizontalPodAutoscaler" in kinds
    cm = next(d for d in k8s if d["kind"] == "ConfigMap")
    assert yaml.safe_load(cm["data"]["posewatch.yaml"]) == yaml_docs(DEPLOY / "posewatch.yaml")[0]
    secret = next(d for d in k8s if d["kind"] == "Secret")
    assert set(secret["stringData"]) == {"CAMERA_USER", "CAMERA_PASSWORD"}
    deployments = {d["metadata"]["name"]: d for d in k8s if d["kind"] == "Deployment"}
    assert set(deployments) == {"posewatch-detect", "posewatch-score"}
    for d in deployments.values():
        c = d["spec"]["template"]["spec"]["containers"][0]
        images.add(c["image"])
        assert c["args"][0] in commands and c["ports"][0]["containerPort"] == port
        assert c["livenessProbe"]["httpGet"]["path"] == "/metrics"
    gpu = deployments["posewatch-detect"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    hpa = next(d for d in k8s if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "posewatch-score"
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "posewatch_consumer_lag"
    assert len(images) == 1, images  # one image everywhere
    kust = yaml_docs(DEPLOY / "k8s" / "kustomization.yaml")[0]
    assert sorted(kust["resources"]) == sorted(
        f.name for f in (DEPLOY / "k8s").glob("*.yaml") if f.name != "kustomization.yaml"
    )
