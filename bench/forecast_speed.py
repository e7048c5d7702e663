"""Forecaster speed: track-windows per second (one window = K samples x H steps).

For batches of 1, 16, 64, 256 tracks at K = 20, H = 12, for GRU-NF and each GRU-SNF
configuration: windows/s, the cost relative to GRU-NF, peak resident memory, the model's
FLOPs per window (torch's FlopCounterMode: matmuls, the bulk of the work) and the achieved
GFLOP/s against a large float32 matrix product timed in the same run.

Usage::

    .venv/bin/python bench/forecast_speed.py [--model CKPT] [--device cpu|cuda] [--out PATH]

Without ``--model`` an untrained default-size model is timed (same cost per window).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forecasting.checkpoint import load_checkpoint
from forecasting.samplers import default_samplers
from forecasting.snf import GRU_NF, SamplerConfig
from forecasting.torch_model import GRUNF, ModelConfig
from forecasting.windows import Standardizer


def samplers(L: int) -> list[SamplerConfig]:
    """GRU-NF, the GRU-SNF default (with and without path weights) and the kept variants."""
    keep = {
        "gru-nf",
        "gru-snf",
        "gru-snf-weighted",
        "snf-latent-point",
        "snf-latent-tempered0.7",
        "snf-latent-mala-tempered0.5",
    }
    return [s for s in default_samplers(L) if s.name in keep]


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("bench/results/forecast_speed.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.model:
        model = load_checkpoint(args.model, device).model
    else:
        cfg = ModelConfig()
        std = Standardizer(
            np.zeros(34, np.float32),
            np.ones(34, np.float32),
            np.zeros(34, np.float32),
            np.ones(34, np.float32),
        )
        torch.manual_seed(0)
        model = GRUNF(cfg, std).to(device).eval()
    L = model.flow.num_layers
    T = 1 + model.cfg.t_obs
    ref_gflops = matmul_gflops(device)
    rows = []
    for s in samplers(L):
        # FLOPs of one window (batch 1 x K samples x H steps).
        past = torch.randn(1, T, 17, 2, device=device) * 0.1
        mask = torch.ones(1, T, 17, dtype=torch.bool, device=device)
        with FlopCounterMode(display=False) as fc:
            model.sample(past, mask, args.H, args.K, s)
        flops = fc.get_total_flops()
        for B in [int(b) for b in args.batches.split(",")]:
            past = torch.randn(B, T, 17, 2, device=device) * 0.1
            mask = torch.ones(B, T, 17, dtype=torch.bool, device=device)
            model.sample(past, mask, args.H, args.K, s)  # warm-up
            n, t0 = 0, time.perf_counter()
            while True:
                out = model.sample(past, mask, args.H, args.K, s)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                n += 1
                el = time.perf_counter() - t0
                if el >= args.min_seconds and n >= 2:
                    break
            wps = B * n / el
            acc = (
                float(out.stats.accepted.sum() / out.stats.proposed.sum())
                if out.stats.proposed.sum() > 0
                else float("nan")
            )
            row = {
                "sampler": s.name,
                "batch": B,
                "windows_per_s": wps,
                "ms_per_batch": 1000 * el / n,
                "gflop_per_window": flops / 1e9,
                "achieved_gflops": wps * flops / 1e9,
                "fraction_of_matmul": wps * flops / 1e9 / ref_gflops,
                "acceptance": acc,
                "peak_rss_mb": peak_rss_mb(),
                "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
                if device.type == "cuda"
                else None,
            }
            rows.append(row)
    nf = {r["batch"]: r["windows_per_s"] for r in rows if r["sampler"] == GRU_NF.name}
    for r in rows:
        r["cost_vs_gru_nf"] = nf[r["batch"]] / r["windows_per_s"]
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"device: {device} ({dev_name}), torch threads {torch.get_num_threads()}, K={args.K}, H={args.H}"
    )
    print(f"reference float32 matmul (2048^3): {ref_gflops:.1f} GFLOP/s")
    head = f"{'sampler':<24}{'batch':>6}{'win/s':>10}{'x NF':>6}{'GFLOP/win':>10}{'GFLOP/s':>9}{'% mm':>6}{'acc':>6}{'RSS MB':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['sampler']:<24}{r['batch']:>6}{r['windows_per_s']:>10.1f}{r['cost_vs_gru_nf']:>6.2f}"
            f"{r['gflop_per_window']:>10.3f}{r['achieved_gflops']:>9.1f}{100 * r['fraction_of_matmul']:>6.0f}"
            f"{r['acceptance']:>6.2f}{r['peak_rss_mb']:>8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "device": str(device),
                "device_name": dev_name,
                "threads": torch.get_num_threads(),
                "K": args.K,
                "H": args.H,
                "matmul_gflops": ref_gflops,
                "model_config": model.cfg.to_dict(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
