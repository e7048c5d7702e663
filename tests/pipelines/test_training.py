"""`posewatch train --members`, `posewatch ensemble` and `posewatch posture` on real AIHub2 poses."""

import shutil
from pathlib import Path

import pytest
import torch

from forecasting.checkpoint import load_checkpoint, update_checkpoint
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
        progress=False,
    )


@pytest.mark.slow
def test_ensemble_of_separate_trainings_equals_training_the_members_together(
    aihub2: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(2)
    one = [run_training(_one_epoch(aihub2, tmp_path / f"s{s}.pt", s)) for s in (2, 3)]
    joined = load_checkpoint(run_ensemble(EnsembleRequest(tuple(one), tmp_path / "joined.pt")))
    together = load_checkpoint(run_training(_one_epoch(aihub2, tmp_path / "m2.pt", 1, members=2)))
    for ck in (joined, together):
        assert isinstance(ck.model, Ensemble) and len(ck.model.member_list()) == 2
        assert [m["seed"] for m in ck.meta["ensemble_members"]] == [2, 3]
        assert ck.meta["members"] == 2 and ck.meta["train_config"]["members"] == 2
    a, b = joined.model.state_dict(), together.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:  # deterministic on the CPU: the same members and the same error-scale fit
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # Members of different data or settings are refused, naming the field.
    update_checkpoint(one[1], split="test")
    with pytest.raises(ValueError, match="split differs"):
        run_ensemble(EnsembleRequest(tuple(one), tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="already an ensemble"):
        run_ensemble(EnsembleRequest((tmp_path / "m2.pt", one[0]), tmp_path / "bad.pt"))
    with pytest.raises(ValueError, match="at least two"):
        run_ensemble(EnsembleRequest(tuple(one[:1]), tmp_path / "bad.pt"))


@pytest.mark.slow
def test_posture_flows_added_to_a_checkpoint_are_deterministic(
    aihub2: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(2)
    base = run_training(_one_epoch(aihub2, tmp_path / "m.pt", 0))
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
    # Data whose validation clips are not the checkpoint's is refused.
    update_checkpoint(copies[0], validation_clips=["elsewhere"])
    with pytest.raises(ValueError, match="validation clips are not the checkpoint's"):
        run_posture(PostureRequest(copies[0], PostureConfig(flows=1, epochs=1)))
