"""`posewatch train --members`, `posewatch ensemble` and `posewatch posture` on real AIHub2 poses."""

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.pose import Track
from detector.posefiles import read_stgnf
from forecasting.checkpoint import (
    load_checkpoint,
    read_checkpoint_file,
    update_checkpoint,
    write_checkpoint_file,
)
from forecasting.posture import PostureConfig
from forecasting.scoring import resolve_scorer
from forecasting.torch_model import Ensemble
from pipelines.offline.training import (
    EnsembleRequest,
    PostureRequest,
    TrainRequest,
    run_ensemble,
    run_posture,
    run_training,
)
from tests.realworld import clip_piece, write_dataset


def _one_epoch(data: Path, out: Path, seed: int, members: int = 1) -> TrainRequest:
    """One epoch (at most 5 minutes) on the CPU, no progress bar."""
    return TrainRequest(
        data,
        out,
        epochs=1,
        seed=seed,
        device="cpu",
        max_minutes=5.0,
        members=members,
        posture_flows=0,
        progress=False,
    )


@pytest.fixture(scope="module")
def three_clips(aihub2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three AIHub2 train clips cut to 600 frames: 576 training windows (2 clips), 288
    validation windows (1 clip)."""
    clips = {}
    for i in range(3):
        name, tracks, labels = clip_piece(aihub2, "train", i, 0, 600)
        clips[name] = (tracks, labels)
    return write_dataset(tmp_path_factory.mktemp("three"), "train", clips)


@pytest.mark.slow
def test_ensemble_of_separate_trainings_equals_training_the_members_together(
    three_clips: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(2)
    data = three_clips  # real poses, small: what is asserted holds for any data
    one = [run_training(_one_epoch(data, tmp_path / f"s{s}.pt", s)) for s in (2, 3)]
    joined = load_checkpoint(run_ensemble(EnsembleRequest(tuple(one), tmp_path / "joined.pt")))
    together = load_checkpoint(run_training(_one_epoch(data, tmp_path / "m2.pt", 1, members=2)))
    for ck in (joined, together):
        assert isinstance(ck.model, Ensemble) and len(ck.model.member_list()) == 2
        assert [m["seed"] for m in ck.meta["ensemble_members"]] == [2, 3]
        assert ck.meta["members"] == 2 and ck.meta["train_config"]["members"] == 2
        assert ck.meta["fps"] == ck.fps == 30.0  # the rate cameras are placed on
    a, b = joined.model.state_dict(), together.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # deterministic on the CPU: the same members and the same error-scale fit
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # Members of different data or settings are refused, naming the field.
    update_checkpoint(one[1], fps=25.0)
    with pytest.raises(ValueError, match="fps differs"):
        run_ensemble(EnsembleRequest(tuple(one), tmp_path / "bad.pt"))
    update_checkpoint(one[1], split="test", fps=30.0)
    with pytest.raises(ValueError, match="split differs"):
        run_ensemble(EnsembleRequest(tuple(one), tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="already an ensemble"):
        run_ensemble(EnsembleRequest((tmp_path / "m2.pt", one[0]), tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="at least two"):
        run_ensemble(EnsembleRequest(tuple(one[:1]), tmp_path / "bad.pt"))


@pytest.mark.slow
def test_posture_flows_added_to_a_checkpoint_are_deterministic(
    three_clips: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(2)
    base = run_training(_one_epoch(three_clips, tmp_path / "m.pt", 0))
    copies = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for c in copies:
        shutil.copy(base, c)
        run_posture(PostureRequest(c, PostureConfig(flows=2, epochs=1), seed=0))
    a, b = (load_checkpoint(c) for c in copies)
    assert a.meta["posture"]["flows"] == 2 and resolve_scorer("fused", a.model) == "fused"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sum(k.startswith("posture.flows.1.") for k in sa) > 10
    for k in sa:  # deterministic on the CPU: flows and their normal statistics
        assert torch.equal(sa[k], sb[k]), k
    # Flows saved before the stillness term: `auto` keeps minhde for them; --refit-stats
    # brings them up to date without retraining: the same flows, and the same statistics
    # as a full fit with the same seed.
    meta, tensors = read_checkpoint_file(copies[1])
    meta["posture"] = {k: v for k, v in meta["posture"].items() if k != "stillness"}
    old = {k: v for k, v in tensors.items() if not k.startswith("posture.still_")}
    assert len(tensors) - len(old) == 3
    write_checkpoint_file(copies[1], meta, old)
    assert resolve_scorer("auto", load_checkpoint(copies[1]).model) == "minhde"
    run_posture(PostureRequest(copies[1], PostureConfig(flows=5, epochs=9), 0, refit_stats=True))
    c = load_checkpoint(copies[1])
    assert c.meta["posture"] == a.meta["posture"]  # 2 flows and their settings, term on
    assert resolve_scorer("auto", c.model) == "fused"
    sc = c.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    with pytest.raises(ValueError, match="no posture flows to refit"):
        run_posture(PostureRequest(base, refit_stats=True))
    # Data whose validation clips are not the checkpoint's is refused.
    update_checkpoint(copies[0], validation_clips=["elsewhere"])
    with pytest.raises(ValueError, match="validation clips are not the checkpoint's"):
        run_posture(PostureRequest(copies[0], PostureConfig(flows=1, epochs=1)))


# -- issue 19 items 2 and 7: few training steps; tracks too short for a window ------------------


def test_two_epochs_of_576_windows_train(three_clips: Path, tmp_path: Path) -> None:
    """576 windows, flip-augmented, in batches of 256: 5 steps an epoch; 2 epochs = 10 steps,
    where OneCycleLR's warm-up had zero length (ZeroDivisionError)."""
    torch.set_num_threads(1)
    req = replace(_one_epoch(three_clips, tmp_path / "m.pt", seed=0), epochs=2)
    path = run_training(req)
    ck = load_checkpoint(path)
    assert [h["epoch"] for h in ck.meta["history"]] == [1, 2]
    assert all(math.isfinite(h["val_nll"]) for h in ck.meta["history"])
    from typer.testing import CliRunner

    from pipelines.cli import app

    r = CliRunner().invoke(
        app, ["train", "--data", str(three_clips), "--out", "x.pt", "--epochs", "0"]
    )
    assert r.exit_code == 2 and "--epochs" in r.stderr and not Path("x.pt").exists()


def test_tracks_too_short_for_any_window_name_the_window_and_the_longest_track(
    three_clips: Path, tmp_path: Path
) -> None:
    clips = {}
    for path in sorted((three_clips / "pose" / "train").iterdir()):
        name = path.name.removesuffix("_alphapose_tracked_person.json")
        tracks = {  # the first 20 frames only
            t: Track.from_rows(t, {f: r for f, r in tr.rows().items() if f < 20})
            for t, tr in read_stgnf(path).items()
            if tr.frames[0] < 20
        }
        clips[name] = (tracks, np.zeros(600, np.uint8))
    data = write_dataset(tmp_path / "short", "train", clips)
    with pytest.raises(ValueError) as info:
        run_training(_one_epoch(data, tmp_path / "m.pt", seed=0))
    assert str(info.value).startswith(
        f"no training windows in {data}/pose/train: a window needs 25 consecutive frames of "
        "one track (1 + t_obs 12 + horizon 12, frame step 1), and the longest of the 2 tracks "
        "has 20 (clip "
    )
    assert not (tmp_path / "m.pt").exists()
