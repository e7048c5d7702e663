"""Shared fixtures: where the shared data lives, and small generated pose fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
# Every service a test starts serves its web view on a free port (tests run beside other
# processes; POSEWATCH_ environment variables override configuration files).
os.environ.setdefault("POSEWATCH_UI__PORT", "0")

#: Helper programs tests start as subprocesses (with other interpreters), not test modules.
collect_ignore = ["tools"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
AIHUB2 = SHARED_DATA / "aihub2"
VIDEOS = SHARED_DATA / "video"


def pytest_report_header() -> str:
    """The machine's load when the suite starts: the service and capacity tests run in real
    time, so a slow run can be told apart from a busy machine."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    one, five, fifteen = os.getloadavg()
    terminalreporter.write_line(f"load average at the end: {one:.1f}, {five:.1f}, {fifteen:.1f}")


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


def held_out_clips(aihub2: Path) -> set[str]:
    """The AIHub2 train clips the default training holds out for validation
    (:func:`forecasting.train.split_clips` of the tracks' clip names, fraction 0.2, seed 0,
    as training splits them)."""
    from forecasting.train import split_clips
    from pipelines.tracks import load_tracks

    return split_clips([t.clip for t in load_tracks(aihub2, "train")], 0.2, 0)[1]


def random_keypoints(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 17, 3)`` float32 poses with some keypoints missing (NaN, NaN, 0)."""
    kp = np.empty((n, 17, 3), np.float32)
    kp[..., 0] = rng.uniform(1, 1920, (n, 17))
    kp[..., 1] = rng.uniform(1, 1080, (n, 17))
    kp[..., 2] = rng.uniform(0.05, 1, (n, 17))
    miss = rng.random((n, 17)) < 0.1
    kp[miss] = (np.nan, np.nan, 0.0)
    return kp


def tiny_checkpoint(path: Path) -> Path:
    """A small untrained GRU-NF (4 flow layers, as cold start builds), standardised on
    random windows: enough to exercise scoring paths, not to detect anything."""
    import torch

    from forecasting.checkpoint import save_checkpoint
    from forecasting.torch_model import GRUNF, ModelConfig
    from forecasting.windows import Standardizer, WindowConfig, Windows

    rng = np.random.default_rng(0)
    L = WindowConfig().length
    poses = rng.normal(0, 0.3, (64, L, 17, 2)).astype(np.float32)
    ones = np.ones((64, L, 17), bool)
    w = Windows(poses, ones, ones, np.ones((64, 3), np.float32), np.zeros(64, np.int64),
                np.zeros(64, np.int64))  # fmt: skip
    torch.manual_seed(0)
    model = GRUNF(
        ModelConfig(hidden=16, flow_layers=4, flow_hidden=16, embed_dim=8), Standardizer.fit(w)
    ).eval()
    return save_checkpoint(path, model, WindowConfig())


@pytest.fixture(scope="session")
def trained_checkpoint(aihub2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GRU-NF trained on AIHub2 train normal windows (a few minutes on 2 cores), with
    one small posture flow (so every scorer can run on it).

    Validation clips (held out from training) are recorded in the checkpoint.
    """
    import torch

    from detector.skeleton import FLIP_INDEX
    from forecasting.checkpoint import save_checkpoint
    from forecasting.posture import PostureConfig
    from forecasting.torch_model import ModelConfig
    from forecasting.train import TrainConfig, build_windows, fit_posture, split_clips, train
    from forecasting.windows import WindowConfig
    from pipelines.tracks import load_tracks

    torch.set_num_threads(2)
    wcfg = WindowConfig()
    tcfg = TrainConfig(epochs=6, seed=0, stride=3, patience=6)
    mcfg = ModelConfig(hidden=128, flow_layers=4, flow_hidden=96, embed_dim=48)
    tracks = load_tracks(aihub2, "train")
    tr_clips, va_clips = split_clips([t.clip for t in tracks], 0.2, 0)
    tr = build_windows([t for t in tracks if t.clip in tr_clips], wcfg, tcfg.stride, True)
    va = build_windows([t for t in tracks if t.clip in va_clips], wcfg, tcfg.stride, True)
    res = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    fit_posture(res.model, tr, va, PostureConfig(flows=1, epochs=2), 0, FLIP_INDEX)
    path = tmp_path_factory.mktemp("model") / "small.pt"
    save_checkpoint(
        path, res.model, wcfg, tcfg, res.history, extra={"validation_clips": sorted(va_clips)}
    )
    return path


@pytest.fixture(scope="session")
def default_checkpoint(aihub2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's first three members and four posture flows, trained as
    ``bench/anomaly_eval.py`` trains them.

    Default architecture and optimisation, AIHub2 train normal windows, members of seeds 0,
    1, 2: the first three of the benchmark's seed-0 ensemble (``DEFAULT_MEMBERS`` = 7, seeds
    0..6; training is deterministic on the CPU), and posture flows of seeds 0..3 (the default
    has 8, ``POSTURE_FLOWS``). Three members and four flows, not seven and eight, to keep CI
    near 45 minutes (about 4 minutes per member and 3 per flow of 20 epochs on 2 cores); the
    full seed-0 default passes the same tests (docs/DECISIONS.md, sessions 5, 11 and 23; its
    flows refitted since session 25: `posewatch posture --refit-stats`).
    ``POSEWATCH_DEFAULT_MODEL=path`` uses that checkpoint instead (a local run that has
    ``runs/anomaly_eval/seed0-m7.pt``).
    """
    given = os.environ.get("POSEWATCH_DEFAULT_MODEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("default_model") / "seed0-m3.pt"
    # In a process of its own, as `posewatch train` runs: this one's heap was bounded by the
    # in-process service tests (forecasting.allocator), which made training the posture
    # flows ~3x slower (page faults).
    code = (
        "import sys, torch; from pathlib import Path; "
        "from pipelines.offline.training import TrainRequest, run_training; "
        "torch.set_num_threads(2); "
        "run_training(TrainRequest(Path(sys.argv[1]), Path(sys.argv[2]), device='cpu', "
        "members=3, posture_flows=4, progress=False))"
    )
    subprocess.run([sys.executable, "-c", code, str(aihub2), str(out)], check=True, cwd=REPO)
    return out
