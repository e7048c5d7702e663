"""Scale-out throughput: PoseFrames scored per second by 1 and by 2 ``posewatch score``
processes (one consumer group, 4 partitions, the embedded Kafka-protocol broker), and the
latency from a pose message to the alert it causes (p50 / p95) with paced input.

Input: real poses, the first ``--frames`` frames of 4 AIHub2 test clips as 4 cameras.
Throughput (at the checkpoint's calibrated threshold, so early stopping works as in
production): the poses are on the topic before the members start; the clock runs from the
first message a member scored to the last (from their ``/metrics``); ``--exact`` also times
one member on the member-by-member path in the same run. Latency (every person alerts,
threshold -100): poses are
published at ``--rate`` messages/s (below capacity); latency = the alert record's broker
timestamp minus the timestamp of the pose message of the frame that triggered it.

Usage::

    .venv/bin/python bench/scale_out.py --model CKPT [--frames 600] [--rate 40] [--exact]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.datasets import load_split
from detector.pose import frames_from_tracks
from pipelines.broker import EmbeddedBroker
from pipelines.detect_service import encode_poseframe
from pipelines.kafka_util import ensure_topic

POSES = "posewatch.poses"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def consumed(port: int) -> float:
    """Pose messages a member has scored (its score-stage latency observations: one per
    message, after scoring; a member scores a poll's messages in one call)."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith("posewatch_stage_latency_seconds_count{") and 'stage="score"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_members(cfg: dict, n: int, group: str, tmp: Path) -> tuple[list, list[int]]:
    procs, ports = [], []
    for i in range(n):
        port = free_port()
        path = tmp / f"{group}-{i}.yaml"
        data = json.loads(json.dumps(cfg))
        data["kafka"]["score_group"] = group
        data["metrics"] = {"port": port}
        path.write_text(yaml.safe_dump(data))
        exe = str(Path(sys.executable).parent / "posewatch")
        log = open(tmp / f"{group}-{i}.log", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen([exe, "score", "--config", str(path)], stdout=log, stderr=log)
        )
        ports.append(port)
    return procs, ports


def stop(procs: list) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def assigned(log: Path) -> int:
    """Partitions a member holds now (its last 'partitions now [...]' log line)."""
    lines = [x for x in log.read_text().splitlines() if "partitions now" in x]
    return lines[-1].count("[") - 1 if lines else -1


def throughput(
    cfg: dict, members: int, streams: list, tmp: Path, tag: str = ""
) -> tuple[float, int]:
    """Start the members, wait until the group is stable, then publish every pose and time
    the members from the first consumed message to the last."""
    from kafka import KafkaProducer

    topic = f"poses.tp{members}{tag}"
    ensure_topic(cfg["kafka"]["bootstrap_servers"][0], topic, partitions=4)
    data = json.loads(json.dumps(cfg))
    data["kafka"]["poses_topic"] = topic
    procs, ports = start_members(data, members, f"tp{members}{tag}", tmp)
    logs = [tmp / f"tp{members}{tag}-{i}.log" for i in range(members)]
    t_first = t_last = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            held = [assigned(x) for x in logs]
            if min(held) >= 1 and sum(held) == 4:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"group of {members} did not settle; see {tmp}")
        time.sleep(2.0)
        prod = KafkaProducer(bootstrap_servers=cfg["kafka"]["bootstrap_servers"], acks="all")
        total = 0
        for j in range(max(len(s) for s in streams)):
            for i, s in enumerate(streams):
                if j < len(s):
                    prod.send(
                        topic, key=f"cam{i}".encode(), value=encode_poseframe(s[j]), partition=i
                    )
                    total += 1
        prod.flush(60)
        prod.close()
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            got = sum(consumed(p) for p in ports)
            now = time.monotonic()
            if got > 0 and t_first is None:
                t_first = now
            if got >= total:
                t_last = now
                break
            time.sleep(0.1)
    finally:
        stop(procs)
    if t_first is None or t_last is None:
        raise RuntimeError(f"{members} member(s) did not finish; see {tmp}")
    return total / (t_last - t_first), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rate", type=float, default=40.0, help="paced messages/s for latency")
    ap.add_argument(
        "--exact",
        action="store_true",
        help="also time 1 member on the member-by-member path (forecaster.exact), in this run",
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_out.json"))
    args = ap.parse_args()
    from kafka import KafkaConsumer, KafkaProducer

    streams = []
    for i, clip in enumerate(load_split(args.data, "test")[:4]):
        fr = frames_from_tracks(clip.tracks, f"cam{i}", (1920, 1080), fps=30.0)
        streams.append([f for f in fr if f.frame_index < args.frames])
    tmp = Path(tempfile.mkdtemp(prefix="posewatch-scale-"))
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap
        ensure_topic(bs, POSES, partitions=4)
        ensure_topic(bs, "alerts.tp")
        ensure_topic(bs, "alerts.lat")
        cfg = {
            "cameras": {"none": {"source": "unused.mp4", "enabled": False}},
            "forecaster": {"checkpoint": str(args.model.resolve()), "threads": 1},
            # throughput at the checkpoint's calibrated threshold (early stop as in production)
            "alerting": {"min_duration_s": 0.2, "update_interval_s": 1.0},
            "kafka": {
                "bootstrap_servers": [bs],
                "topic": "alerts.tp",
                "spool_dir": str(tmp / "spool"),
            },
        }
        rows = []
        runs = [(1, "default"), (2, "default")] + ([(1, "exact")] if args.exact else [])
        for members, path in runs:
            run_cfg = json.loads(json.dumps(cfg))
            if path == "exact":
                run_cfg["forecaster"].update(exact=True, early_stop_margin=None)
            tp, total = throughput(run_cfg, members, streams, tmp, path)
            rows.append({"members": members, "path": path, "poses_per_s": tp})
            print(
                f"{members} score process(es) ({path}), 1 torch thread each: {tp:8.1f} poses/s",
                flush=True,
            )
        prod = KafkaProducer(bootstrap_servers=bs, acks="all", linger_ms=5)
        sent_at: dict[tuple[str, int], int] = {}

        # Latency with paced input, one member, a fresh group and a fresh poses topic.
        ensure_topic(bs, "poses.paced", partitions=4)
        lat_cfg = json.loads(json.dumps(cfg))
        lat_cfg["alerting"]["threshold"] = -100.0  # every person alerts: latency samples
        lat_cfg["kafka"].update(topic="alerts.lat", poses_topic="poses.paced")
        procs, _ = start_members(lat_cfg, 1, "lat", tmp)
        print(f"{total} pose messages of 4 cameras on 4 partitions; {os.cpu_count()} cores")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (tmp / "lat-0.log").read_text().count(
                "partitions now"
            ):
                time.sleep(0.5)
            n_lat = min(args.frames, 300)
            for j in range(n_lat):
                for i, s in enumerate(streams):
                    if j < len(s):
                        md = prod.send(
                            "poses.paced",
                            key=f"cam{i}".encode(),
                            value=encode_poseframe(s[j]),
                            partition=i,
                        ).get(10)
                        sent_at[(f"cam{i}", s[j].frame_index)] = md.timestamp
                time.sleep(len(streams) / args.rate)
            time.sleep(5)
        finally:
            stop(procs)
        c = KafkaConsumer(
            "alerts.lat",
            bootstrap_servers=bs,
            auto_offset_reset="earliest",
            consumer_timeout_ms=3000,
        )
        lats = []
        for rec in c:
            a = json.loads(rec.value)
            t0 = sent_at.get((a["camera"], a["frame_index"]))
            if a["type"] != "end" and t0 is not None:
                lats.append((rec.timestamp - t0) / 1000.0)
        c.close()
        prod.close()
    lat = np.array(lats) if lats else np.array([np.nan])
    result = {
        "poses": total,
        "cameras": 4,
        "partitions": 4,
        "cpus": os.cpu_count(),
        "throughput": rows,
        "speedup_2_vs_1": rows[1]["poses_per_s"] / rows[0]["poses_per_s"],
        "speedup_vs_exact": (
            rows[0]["poses_per_s"] / rows[2]["poses_per_s"] if len(rows) > 2 else None
        ),
        "latency": {
            "rate_msgs_per_s": args.rate,
            "alerts": len(lats),
            "p50_s": float(np.nanpercentile(lat, 50)),
            "p95_s": float(np.nanpercentile(lat, 95)),
        },
    }
    print(f"{'members':>8}{'path':>9}{'poses/s':>10}")
    for r in rows:
        print(f"{r['members']:>8}{r['path']:>9}{r['poses_per_s']:>10.1f}")
    print(
        f"2 vs 1: x{result['speedup_2_vs_1']:.2f}; pose -> alert latency at {args.rate:g} msg/s: "
        f"p50 {result['latency']['p50_s']:.3f} s, p95 {result['latency']['p95_s']:.3f} s "
        f"({len(lats)} alerts)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
