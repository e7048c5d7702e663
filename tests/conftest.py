"""Shared fixtures: where the shared data lives, and small generated pose fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
AIHUB2 = SHARED_DATA / "aihub2"
VIDEOS = SHARED_DATA / "video"


def _require(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data missing at {path}: CI must have ../shared beside the repo")
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def aihub2() -> Path:
    """The labelled AIHub2 pose dataset (``../shared/data/aihub2``)."""
    return _require(AIHUB2)


@pytest.fixture(scope="session")
def videos() -> Path:
    """The shared real videos folder."""
    return _require(VIDEOS)


def random_keypoints(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 17, 3)`` float32 poses with some keypoints missing (NaN, NaN, 0)."""
    kp = np.empty((n, 17, 3), np.float32)
    kp[..., 0] = rng.uniform(1, 1920, (n, 17))
    kp[..., 1] = rng.uniform(1, 1080, (n, 17))
    kp[..., 2] = rng.uniform(0.05, 1, (n, 17))
    miss = rng.random((n, 17)) < 0.1
    kp[miss] = (np.nan, np.nan, 0.0)
    return kp
