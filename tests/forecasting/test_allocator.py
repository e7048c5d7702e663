"""Freed tensor memory stays in the process while the flows train (forecasting.allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Trains a posture flow for 10 batches in a fresh process; prints its minor page faults.
_TRAIN = """
import json, resource, sys, torch
import forecasting.allocator
if sys.argv[1] == "default":
    forecasting.allocator._done = False  # as if already tried: glibc's thresholds stay
from forecasting.posture import COCO_EDGES, GraphGlow, train_glow
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(256 * 10, 2, 24, 17)
flow = GraphGlow(17, COCO_EDGES, 24, 8, 8)
train_glow(flow, x[:256], 1)  # warm-up: first-touch of the weights, the optimiser state
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
train_glow(flow, x, 1)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str, env: dict[str, str]) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_a_flow_does_not_map_its_memory_afresh_every_step() -> None:
    """With glibc's default thresholds each step maps and faults in its activations again;
    with :func:`retain_freed_memory` (called by ``train_glow``) it reuses the heap."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    default = _faults("default", env)
    retained = _faults("retained", env)
    print(f"minor page faults: {default:,} with glibc's defaults, {retained:,} retained")
    assert retained * 4 < default, (default, retained)
