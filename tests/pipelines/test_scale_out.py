"""Split services on a real Kafka-protocol broker: `posewatch score` as a consumer group
(failover after SIGKILL, dead-letter topic) fed with real AIHub2 poses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.datasets import load_split
from detector.pose import PoseFrame, frames_from_tracks
from pipelines.broker import EmbeddedBroker
from pipelines.config import load_config
from pipelines.detect_service import encode_poseframe
from pipelines.kafka_util import ensure_topic
from pipelines.score_service import ScoreService

REPO = Path(__file__).resolve().parents[2]
POSES = "posewatch.poses"


def camera_frames(aihub2: Path, cameras: int, frames: int) -> list[list[PoseFrame]]:
    """Real poses: the first ``frames`` frames of ``cameras`` AIHub2 test clips."""
    out = []
    for i, clip in enumerate(load_split(aihub2, "test")[:cameras]):
        fr = frames_from_tracks(clip.tracks, f"cam{i}", (1920, 1080), fps=30.0)
        out.append([f for f in fr if f.frame_index < frames])
    return out


def publish(bootstrap: str, streams: list[list[PoseFrame]], rate: float | None = None) -> int:
    """Interleave the cameras' frames onto the poses topic (camera i -> partition i)."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    n = 0
    longest = max(len(s) for s in streams)
    for j in range(longest):
        for i, s in enumerate(streams):
            if j < len(s):
                prod.send(POSES, key=f"cam{i}".encode(), value=encode_poseframe(s[j]), partition=i)
                n += 1
        if rate:
            time.sleep(len(streams) / rate)
    prod.flush(30)
    prod.close()
    return n


def read_topic(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[Any]:
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(idle_s * 1000),
    )
    recs = list(c)
    c.close()
    return recs


def scores_of(path: Path) -> dict[tuple[str, int, int], float]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            d = json.loads(line)
            out[(d["camera"], d["track_id"], d["frame_index"])] = d["score"]
    return out


def config_data(bootstrap: str, ckpt: Path, tmp: Path, topic: str) -> dict[str, Any]:
    return {
        "cameras": {"none": {"source": "unused.mp4", "enabled": False}},
        # kde scores, for which the threshold below was measured; failover does not depend on
        # the scorer.
        "forecaster": {"checkpoint": str(ckpt), "stride": 3, "samples": 10, "scorer": "kde"},
        # A threshold inside the scores' range (60th percentile here): episodes start and end.
        "alerting": {
            "threshold": -5.5,
            "min_duration_s": 0.2,
            "update_interval_s": 2.0,
            "cooldown_s": 0.5,
        },
        "kafka": {
            "bootstrap_servers": [bootstrap],
            "topic": topic,
            "spool_dir": str(tmp / "spool"),
            "session_timeout_s": 6.0,
        },
        "metrics": {"enabled": False},
    }


def run_in_thread(svc: ScoreService, done: Any, timeout: float = 300.0) -> Any:
    result: dict[str, Any] = {}
    th = threading.Thread(target=lambda: result.update(s=svc.run(max_seconds=timeout)))
    th.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        time.sleep(0.5)
    svc.stop()
    th.join(60)
    return result["s"]


@pytest.mark.slow
@pytest.mark.broker
def test_failover_after_sigkill_scores_every_window_and_loses_no_alert(
    aihub2: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    streams = camera_frames(aihub2, cameras=4, frames=600)
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap
        ensure_topic(bs, POSES, partitions=4)
        for t in ("alerts.ref", "alerts.fo"):
            ensure_topic(bs, t)
        n = publish(bs, streams)

        # Reference: one member scores everything.
        ref_cfg = config_data(bs, trained_checkpoint, tmp_path / "ref", "alerts.ref")
        ref_cfg["outputs"] = {"scores_jsonl": str(tmp_path / "ref.scores.jsonl")}
        ref = ScoreService(load_config(data=ref_cfg), group_id="ref")
        s = run_in_thread(ref, lambda: ref.consumed >= n)
        assert s.messages == n and s.invalid == 0
        ref_scores = scores_of(tmp_path / "ref.scores.jsonl")
        ref_ids = {json.loads(r.value)["alert_id"] for r in read_topic(bs, "alerts.ref")}
        assert len(ref_scores) > 300 and len(ref_ids) >= 8

        # Two member processes in one group; the poses arrive while they run.
        cfg_path = tmp_path / "fo.yaml"
        cfg_path.write_text(
            yaml.safe_dump(config_data(bs, trained_checkpoint, tmp_path / "fo", "alerts.fo"))
        )
        procs = []
        for i in range(2):
            env = {
                **os.environ,
                "POSEWATCH_KAFKA__SCORE_GROUP": "fo",
                "POSEWATCH_OUTPUTS__SCORES_JSONL": str(tmp_path / f"fo{i}.scores.jsonl"),
            }
            procs.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "posewatch"),
                        "score",
                        "--config",
                        str(cfg_path),
                    ],
                    env=env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"fo{i}.log", "w"),  # noqa: SIM115
                )
            )
        try:
            # Wait until both members work (each has scored something), then kill one.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                len(scores_of(tmp_path / f"fo{i}.scores.jsonl")) > 50 for i in range(2)
            ):
                time.sleep(0.5)
            both = [len(scores_of(tmp_path / f"fo{i}.scores.jsonl")) for i in range(2)]
            assert all(b > 50 for b in both), (both, (tmp_path / "fo0.log").read_text()[-3000:])
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            killed_at = len(scores_of(tmp_path / "fo0.scores.jsonl"))
            # The survivor takes the dead member's partitions over and catches up.
            deadline = time.monotonic() + 240
            union: dict[tuple[str, int, int], float] = {}
            while time.monotonic() < deadline:
                union = {
                    **scores_of(tmp_path / "fo0.scores.jsonl"),
                    **scores_of(tmp_path / "fo1.scores.jsonl"),
                }
                if set(ref_scores) <= set(union):
                    break
                time.sleep(1.0)
            procs[1].send_signal(signal.SIGTERM)
            assert procs[1].wait(60) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        log1 = (tmp_path / "fo1.log").read_text()
        missing = set(ref_scores) - set(union)
        assert not missing, (len(missing), sorted(missing)[:5], log1[-3000:])
        # Same input -> same scores in any member (replay rebuilds the exact state).
        diff = max(abs(union[k] - v) for k, v in ref_scores.items())
        assert diff < 1e-3, diff
        assert killed_at < len(ref_scores)  # the kill really was mid-stream
        fo_ids = {json.loads(r.value)["alert_id"] for r in read_topic(bs, "alerts.fo")}
        assert ref_ids <= fo_ids, len(ref_ids - fo_ids)


@pytest.mark.slow
@pytest.mark.broker
def test_malformed_messages_go_to_the_dead_letter_topic(
    aihub2: Path, trained_checkpoint: Path, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    (good,) = camera_frames(aihub2, cameras=1, frames=240)
    bad_payloads = [
        b"\xff\xfe not utf-8",
        b"{not json",
        json.dumps({"camera": "cam0", "frame_index": 3}).encode(),  # no persons
        json.dumps(
            {
                "camera": "cam0",
                "frame_index": 5,
                "timestamp": 0.1,
                "image_size": [10, 10],
                "persons": [{"track_id": 1, "bbox": [0, 0, 1, 1], "keypoints": [[1, 2]]}],
            }
        ).encode(),
    ]
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap
        for t in ("poses.clean", POSES, "posewatch.poses.dlq", "alerts.a", "alerts.b"):
            ensure_topic(bs, t)
        prod = KafkaProducer(bootstrap_servers=bs, acks="all")
        for j, f in enumerate(good):
            prod.send("poses.clean", key=b"cam0", value=encode_poseframe(f))
            prod.send(POSES, key=b"cam0", value=encode_poseframe(f))
            if j % 60 == 30:
                prod.send(POSES, key=b"cam0", value=bad_payloads[(j // 60) % len(bad_payloads)])
        prod.flush(30)
        prod.close()
        n_bad = len([j for j in range(len(good)) if j % 60 == 30])
        assert n_bad == 4

        runs = {}
        for name, topic in (("clean", "poses.clean"), ("mixed", POSES)):
            data = config_data(bs, trained_checkpoint, tmp_path / name, f"alerts.{name[0]}")
            data["kafka"]["poses_topic"] = topic
            data["outputs"] = {"scores_jsonl": str(tmp_path / f"{name}.jsonl")}
            svc = ScoreService(load_config(data=data), group_id=name)
            total = len(good) + (n_bad if name == "mixed" else 0)
            s = run_in_thread(svc, lambda svc=svc, total=total: svc.consumed >= total)
            runs[name] = (s, svc, scores_of(tmp_path / f"{name}.jsonl"))
        s, svc, mixed = runs["mixed"]
        assert s.invalid == n_bad
        body = svc.metrics.render().decode()
        assert f'posewatch_messages_invalid_total{{topic="{POSES}"}} {float(n_bad)}' in body
        dead = read_topic(bs, "posewatch.poses.dlq")
        assert sorted(r.value for r in dead) == sorted(bad_payloads)
        for r in dead:
            headers = dict(r.headers)
            assert headers["source"].startswith(POSES.encode())
            assert headers["error"]  # the reason, e.g. "missing 'timestamp'"
        clean = runs["clean"][2]
        assert len(clean) >= 60 and mixed == clean  # good messages scored exactly the same
