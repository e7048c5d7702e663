"""One malloc policy per process (forecasting.allocator): batch work keeps its freed memory,
a service's bounded heap is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Trains a posture flow for 10 batches in a fresh process under one policy; prints what
# retain_freed_memory() (called by train_glow) returned and the minor page faults.
_TRAIN = """
import json, resource, sys, torch
import forecasting.allocator as allocator
mode = sys.argv[1]
if mode == "glibc":
    allocator._mode = "user"  # as if the user had set MALLOC_*: glibc's own thresholds
elif mode == "bounded":
    allocator.bound_heap_growth()  # a service, before its main loop
from forecasting.posture import COCO_EDGES, GraphGlow, train_glow
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(256 * 10, 2, 24, 17)
flow = GraphGlow(17, COCO_EDGES, 24, 8, 8)
train_glow(flow, x[:256], 1)  # warm-up: first touch of the weights, the optimiser state
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
train_glow(flow, x, 1)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps([allocator.retain_freed_memory(), faults]))
"""


def _run(mode: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    retained, faults = json.loads(out.stdout.strip().splitlines()[-1])
    return bool(retained), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_training_keeps_its_memory_unless_a_service_bounded_the_heap() -> None:
    """With glibc's own thresholds, or a service's fixed 512 KiB mmap threshold, every
    training step maps and faults in its activations again; batch work raises the
    thresholds and reuses the heap (measured: ~695,000 against ~11,000 faults). In a
    process whose service bounded its heap, training leaves the bound in place."""
    glibc = _run("glibc")
    bounded = _run("bounded")
    retained = _run("retained")
    print(f"minor page faults: glibc {glibc[1]:,}, bounded {bounded[1]:,}, kept {retained[1]:,}")
    assert (glibc[0], bounded[0], retained[0]) == (False, False, True)
    assert retained[1] * 4 < glibc[1], (glibc, retained)
    assert retained[1] * 4 < bounded[1], (bounded, retained)
