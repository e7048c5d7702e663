"""Chaos run: ``posewatch run`` (N looping cameras plus a poison camera, an external tansu
broker) while, at random seeded times, the broker is killed and restarted, the service is
SIGKILLed and restarted, and the spool's disk (a small tmpfs) is filled and freed. At the
end every alert of the JSONL file is looked up on the topic.

The topic is read all along by a collector (tansu keeps topics in memory: a restarted broker
is empty, so what it held is read before it is killed; the collector catches up first).
An alert counts as lost when the JSONL file has it and the topic never had it.

Usage::

    .venv/bin/python bench/chaos.py [--minutes 10] [--seed 0] [--cameras 4] [--model CKPT]

Needs root for the tmpfs (without it, the disk faults are skipped and the table says so).
Prints a table and writes ``bench/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.broker import EmbeddedBroker, free_port  # noqa: E402
from pipelines.kafka_util import ensure_topic  # noqa: E402

VIDEO = ROOT / ".." / "shared" / "data" / "video" / "vtest.avi"
TOPIC = "posewatch.alerts"
EXE = str(Path(sys.executable).with_name("posewatch"))


class Collector(threading.Thread):
    """Reads the alert topic from its beginning, again after each broker restart."""

    def __init__(self, bootstrap: str):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.records: dict[tuple[int, int], tuple[str, str, int]] = {}  # (gen, offset) ->
        self.stop = threading.Event()
        self.generation = 0  # bumped when the broker restarts: read from the beginning
        self._read_gen = -1
        self.position = 0
        self.end = 0

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(TOPIC, 0)
        consumer = None
        while not self.stop.is_set():
            try:
                if consumer is None or self._read_gen != self.generation:
                    if consumer is not None:
                        consumer.close()
                    consumer = KafkaConsumer(bootstrap_servers=self.bootstrap,
                                             enable_auto_commit=False)  # fmt: skip
                    consumer.assign([tp])
                    consumer.seek_to_beginning(tp)
                    self._read_gen = self.generation
                for recs in consumer.poll(timeout_ms=200).values():
                    for r in recs:  # a re-read after a reconnect is not a duplicate
                        a = json.loads(r.value)
                        key = (self._read_gen, r.offset)
                        self.records[key] = (a["alert_id"], a["type"], a["frame_index"])
                self.position = consumer.position(tp)
                self.end = consumer.end_offsets([tp])[tp]
            except Exception:
                time.sleep(0.5)
                consumer = None
        if consumer is not None:
            consumer.close()

    @property
    def seen(self) -> list[tuple[str, str, int]]:
        return list(self.records.values())

    def caught_up(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.position >= self.end and self._read_gen == self.generation:
                return True
            time.sleep(0.2)
        return False


def tiny_model(path: Path) -> Path:
    """An untrained small model calibrated so that every scored person alerts."""
    import numpy as np
    import torch

    from forecasting.checkpoint import load_checkpoint, save_checkpoint, update_checkpoint
    from forecasting.torch_model import GRUNF, ModelConfig
    from forecasting.windows import Standardizer, WindowConfig, Windows
    from pipelines.serving import calibration_record, scorer_config

    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.3, (64, 25, 17, 2)).astype(np.float32)
    ones = np.ones((64, 25, 17), bool)
    w = Windows(poses, ones, ones, np.ones((64, 3), np.float32), np.zeros(64, np.int64),
                np.zeros(64, np.int64))  # fmt: skip
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, flow_layers=4, flow_hidden=32, embed_dim=16)
    save_checkpoint(path, GRUNF(cfg, Standardizer.fit(w)).eval(), WindowConfig())
    ck = load_checkpoint(path)
    sc = scorer_config(ck, "minhde", "default", 8)
    update_checkpoint(path, calibration={"threshold": -1e9, **calibration_record(ck, sc)})
    return path


class Chaos:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.port = free_port()
        self.broker = EmbeddedBroker(port=self.port).start()
        ensure_topic(self.broker.bootstrap, TOPIC)
        self.collector = Collector(self.broker.bootstrap)
        self.collector.start()
        self.faults: Counter[str] = Counter()
        self.crashes = 0
        self.disk = self._mount()
        self.filler: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(work / "service.log", "ab")  # noqa: SIM115

    def _mount(self) -> Path | None:
        disk = self.work / "disk"
        disk.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
        return disk if res.returncode == 0 else None

    def config(self, model: Path) -> Path:
        poison = self.work / "poison.mp4"
        poison.write_bytes(os.urandom(20000))
        cams: dict[str, Any] = {
            f"cam{i}": {"source": str(VIDEO), "pace": True, "loop": True, "fps": 10}
            for i in range(self.args.cameras)
        }
        cams["poison"] = {"source": str(poison), "retry_interval": 1.0, "max_backoff": 5.0}
        spool = (self.disk or self.work) / "spool"
        data = {
            "cameras": cams,
            "detector": {"imgsz": 320},
            "forecaster": {"checkpoint": str(model), "samples": 8, "threads": 1},
            "alerting": {"min_duration_s": 0.3, "update_interval_s": 1.0, "cooldown_s": 1.0},
            "kafka": {"bootstrap_servers": [self.broker.bootstrap], "spool_dir": str(spool),
                      "spool_max_mb": 0.4},
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": str(self.work / "alerts.jsonl")},
        }  # fmt: skip
        path = self.work / "chaos.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_service(self, cfg: Path) -> None:
        self.proc = subprocess.Popen([EXE, "run", "--config", str(cfg)], stdout=self.log,
                                     stderr=self.log, env={**os.environ, "YOLO_OFFLINE": "1"})  # fmt: skip

    def check_service(self, cfg: Path) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes += 1  # it exited without being told to
            self.start_service(cfg)

    # -- faults ---------------------------------------------------------------------------
    def restart_broker(self) -> None:
        self.collector.caught_up()
        self.broker.stop()
        time.sleep(self.rng.uniform(3, 15))
        self.broker = EmbeddedBroker(port=self.port).start()
        ensure_topic(self.broker.bootstrap, TOPIC)
        self.collector.generation += 1
        self.faults["broker restart"] += 1

    def kill_service(self, cfg: Path) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(self.rng.uniform(1, 5))
        self.start_service(cfg)
        self.faults["service SIGKILL"] += 1

    def fill_disk(self) -> None:
        if self.disk is None or self.filler is not None:
            return
        self.filler = self.disk / "filler"
        with open(self.filler, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        self.faults["disk full"] += 1

    def free_disk(self) -> None:
        if self.filler is not None:
            self.filler.unlink()
            self.filler = None

    def run(self) -> dict[str, Any]:
        model = self.args.model or tiny_model(self.work / "tiny.pt")
        cfg = self.config(model)
        self.start_service(cfg)
        self.faults["poison camera (random bytes, whole run)"] = 1
        t_end = time.monotonic() + 60 * self.args.minutes
        free_at = 0.0
        while time.monotonic() < t_end:
            time.sleep(self.rng.uniform(15, 40))
            self.check_service(cfg)
            if self.filler is not None and time.monotonic() > free_at:
                self.free_disk()
            fault = self.rng.choice(["broker", "service", "disk"])
            if fault == "broker":
                self.restart_broker()
            elif fault == "service":
                self.kill_service(cfg)
            else:
                self.fill_disk()
                free_at = time.monotonic() + self.rng.uniform(20, 60)
        self.free_disk()
        self.check_service(cfg)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)  # the end: everything spooled goes out
        self.proc.wait(120)
        time.sleep(3)
        self.collector.caught_up()
        return self.report()

    def report(self) -> dict[str, Any]:
        lines = (self.work / "alerts.jsonl").read_text().splitlines()
        produced = []
        for x in lines:
            try:
                a = json.loads(x)
            except json.JSONDecodeError:  # a line torn by a SIGKILL
                continue
            produced.append((a["alert_id"], a["type"], a["frame_index"]))
        on_topic = Counter(self.collector.seen)
        lost = [a for a in set(produced) if a not in on_topic]
        log = (self.work / "service.log").read_text(errors="replace")
        return {
            "minutes": self.args.minutes,
            "seed": self.args.seed,
            "cameras": self.args.cameras,
            "faults": dict(self.faults),
            "disk_faults": self.disk is not None,
            "alerts_produced": len(set(produced)),
            "alerts_on_topic": len(on_topic),
            "alerts_lost": len(lost),
            "lost_examples": lost[:5],
            "duplicates": sum(n - 1 for n in on_topic.values() if n > 1),
            "crashes_needing_restart": self.crashes,
            "tracebacks_in_log": log.count("Traceback"),
            "lost_at_exit_lines": log.count("are lost at exit"),
        }

    def close(self) -> None:
        self.collector.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.broker.stop()
        if self.disk is not None:
            subprocess.run(["umount", "-l", str(self.disk)], check=False)
        self.log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="posewatch-chaos-"))
    chaos = Chaos(args, work)
    try:
        rep = chaos.run()
    finally:
        chaos.close()
    rows = [(k, v) for k, v in rep.items() if k not in ("lost_examples",)]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"work folder (service log, alerts.jsonl): {work}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
