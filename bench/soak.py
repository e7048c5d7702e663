"""Soak: 4 looping cameras through ``posewatch detect`` and 2 ``posewatch score`` processes
on the embedded broker for ``--minutes``; samples each process's resident memory, threads and
open file descriptors every ``--every`` seconds and reports the growth after warm-up.

Pass: resident memory grows less than 10% from the end of warm-up to the end, and thread
and descriptor counts do not grow.

Usage::

    .venv/bin/python bench/soak.py --model CKPT [--minutes 10] [--warmup 2] [--video PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.broker import EmbeddedBroker
from pipelines.kafka_util import ensure_topic

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video" / "vtest.avi"


def sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:"))
    threads = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("Threads:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": rss / 1024, "threads": threads, "fds": fds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="minutes before the baseline")
    ap.add_argument("--every", type=float, default=15.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="posewatch-soak-"))
    exe = str(Path(sys.executable).parent / "posewatch")
    with EmbeddedBroker() as broker:
        ensure_topic(broker.bootstrap, "posewatch.poses", partitions=4)
        ensure_topic(broker.bootstrap, "posewatch.alerts")
        ensure_topic(broker.bootstrap, "posewatch.poses.dlq")
        base = {
            # Names whose key hashes (Kafka's murmur2) land on 4 different partitions, so both
            # score members get cameras (cam0..cam3 hash onto 2 partitions only).
            "cameras": {
                name: {"source": str(args.video.resolve()), "loop": True, "pace": True}
                for name in ("gate", "dock", "lobby", "lawn")
            },
            "forecaster": {"checkpoint": str(args.model.resolve())},
            "alerting": {"threshold": -100.0},
            "kafka": {"bootstrap_servers": [broker.bootstrap], "spool_dir": str(tmp / "spool")},
            "metrics": {"enabled": False},
        }
        procs = {}
        for name, cmd in (("detect", "detect"), ("score-a", "score"), ("score-b", "score")):
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(base))
            log = open(tmp / f"{name}.log", "w")  # noqa: SIM115
            procs[name] = subprocess.Popen(
                [exe, cmd, "--config", str(path)], stdout=log, stderr=log
            )
        samples: dict[str, list[dict[str, float]]] = {n: [] for n in procs}
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(args.every)
                t = (time.monotonic() - t0) / 60
                for n, p in procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"{n} exited with {p.returncode}; see {tmp}/{n}.log")
                    samples[n].append({"minute": t, **sample(p.pid)})
                line = "  ".join(
                    f"{n} {s[-1]['rss_mb']:.0f} MB/{s[-1]['threads']:.0f} thr/{s[-1]['fds']:.0f} fd"
                    for n, s in samples.items()
                )
                print(f"{t:5.1f} min  {line}", flush=True)
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
    rows = []
    for n, s in samples.items():
        base_s = next(x for x in s if x["minute"] >= args.warmup)
        end = s[-1]
        peak_thr = max(x["threads"] for x in s if x["minute"] >= args.warmup)
        peak_fd = max(x["fds"] for x in s if x["minute"] >= args.warmup)
        rows.append(
            {
                "process": n,
                "rss_mb_after_warmup": base_s["rss_mb"],
                "rss_mb_end": end["rss_mb"],
                "rss_growth_pct": 100 * (end["rss_mb"] / base_s["rss_mb"] - 1),
                "threads": [base_s["threads"], end["threads"], peak_thr],
                "fds": [base_s["fds"], end["fds"], peak_fd],
            }
        )
    print(
        f"{'process':<10}{'RSS warm MB':>12}{'RSS end MB':>12}{'growth':>8}{'threads':>14}{'fds':>14}"
    )
    for r in rows:
        print(
            f"{r['process']:<10}{r['rss_mb_after_warmup']:>12.0f}{r['rss_mb_end']:>12.0f}"
            f"{r['rss_growth_pct']:>7.1f}%{r['threads'][:2]!s:>14}{r['fds'][:2]!s:>14}"
        )
    ok = all(
        r["rss_growth_pct"] < 10
        and r["threads"][1] <= r["threads"][0]
        and r["fds"][1] <= r["fds"][0]
        for r in rows
    )
    print("PASS" if ok else "FAIL", f"({args.minutes:g} min, warm-up {args.warmup:g} min)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "minutes": args.minutes,
                "warmup": args.warmup,
                "pass": ok,
                "rows": rows,
                "samples": samples,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
