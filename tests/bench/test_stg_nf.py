"""The STG-NF baseline re-implementation (bench/stg_nf.py) matches the anchor run's setup."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data" / "aihub2"


@pytest.fixture(scope="module")
def stg() -> Any:
    """``bench/stg_nf.py`` as a module (bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("stg_nf", ROOT / "bench" / "stg_nf.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["stg_nf"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_parameter_count_matches_the_anchor(stg: Any) -> None:
    # The flow is forecasting.posture.GraphGlow (its log-det is checked against the
    # Jacobian in tests/forecasting/test_posture.py) on STG-NF's 18-joint graph.
    assert sum(p.numel() for p in stg.stgnf().parameters()) == 616  # anchors.md


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/aihub2")
def test_windows_match_the_anchor_counts(stg: Any) -> None:
    train, _ = stg.load_segments(DATA, "train", stg.TRAIN_STRIDE)
    test, labels = stg.load_segments(DATA, "test", 1)
    assert len(train.data) == 6086  # anchors.md: 6,086 training windows
    assert len(test.data) == 36015  # anchors.md: 36,015 test windows
    assert 0.5 < train.normal.mean() < 0.65  # ~43% of train frames are anomalous
    x = stg.normalise(test.data[:100])
    np.testing.assert_allclose(x.mean(axis=(2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x[:, 1].std(axis=(1, 2)), 1, rtol=1e-3)
    assert set(labels) == set(np.unique(test.clip))
