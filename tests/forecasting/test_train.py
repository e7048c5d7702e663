import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import load_checkpoint, save_checkpoint
from forecasting.snf import SNF_DEFAULT
from forecasting.torch_model import GRUNF, Ensemble, ModelConfig, to_tensor
from forecasting.train import TrainConfig, build_windows, evaluate_nll, split_clips, train
from forecasting.windows import Standardizer, WindowConfig, fill_unseen
from pipelines.tracks import load_tracks


def test_split_clips_is_deterministic_and_disjoint() -> None:
    names = [f"c{i}" for i in range(11)]
    a = split_clips(names, 0.2, 0)
    assert a == split_clips(names, 0.2, 0)
    assert len(a[1]) == 2 and not (a[0] & a[1]) and (a[0] | a[1]) == set(names)


@pytest.mark.slow
def test_training_on_a_small_real_subset_lowers_validation_nll(aihub2: Path) -> None:
    tracks = [t for t in load_tracks(aihub2, "train") if len(t.frames) > 3000]
    wcfg = WindowConfig(t_obs=8, horizon=6)
    tr = build_windows(tracks[:2], wcfg, stride=4, normal_only=True)
    va = build_windows(tracks[2:3], wcfg, stride=4, normal_only=True)
    assert len(tr) > 500 and len(va) > 100
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=64, flow_layers=4, flow_hidden=64, embed_dim=32)
    std = Standardizer.fit(tr)
    torch.manual_seed(0)
    untrained = GRUNF(mcfg, std)
    Pv, Mv = to_tensor(fill_unseen(va.poses, std.pose_mean)), to_tensor(va.mask)
    before = evaluate_nll(untrained, Pv, Mv)
    tcfg = TrainConfig(epochs=3, batch_size=128, seed=0, patience=3)
    res = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    after = res.history[-1]["val_nll"]
    assert after < before - 0.3, (before, after)
    assert res.history[-1]["train_nll"] < res.history[0]["train_nll"]
    # Deterministic on CPU for a seed.
    res2 = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    assert res2.history[-1]["val_nll"] == pytest.approx(after, abs=1e-6)


@pytest.mark.slow
def test_ensemble_members_are_seeded_trainings_and_sample_as_a_mixture(
    aihub2: Path, tmp_path: Path
) -> None:
    tracks = [t for t in load_tracks(aihub2, "train") if len(t.frames) > 3000]
    wcfg = WindowConfig(t_obs=8, horizon=6)
    tr = build_windows(tracks[:1], wcfg, stride=6, normal_only=True)
    va = build_windows(tracks[2:3], wcfg, stride=6, normal_only=True)
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=32, flow_layers=2, flow_hidden=32, embed_dim=16)
    tcfg = TrainConfig(epochs=2, batch_size=128, seed=1, members=3)
    res = train(tr, va, mcfg, tcfg, progress=False)
    assert isinstance(res.model, Ensemble)
    # Seeds seed * members + r, each trained exactly as a single training with that seed.
    assert [r["seed"] for r in res.members] == [3, 4, 5]
    single = train(tr, va, mcfg, replace(tcfg, seed=4, members=1), progress=False)
    assert single.best_val_nll == pytest.approx(res.members[1]["val_nll"], abs=1e-6)
    assert {h["member"] for h in res.history} == {0, 1, 2}
    # The mixture's density: per window between its best member's and that minus log(3).
    std = res.model.standardizer()
    Pv, Mv = to_tensor(fill_unseen(va.poses, std.pose_mean)), to_tensor(va.mask)
    with torch.no_grad():
        mix = res.model.log_prob(Pv, Mv)
        best = torch.stack([m.log_prob(Pv, Mv) for m in res.model.member_list()]).amax(0)
    assert bool((mix <= best + 1e-4).all()) and bool((mix >= best - math.log(3) - 1e-4).all())
    assert evaluate_nll(res.model, Pv, Mv) == pytest.approx(res.best_val_nll, abs=1e-6)
    # K futures split across the members: 7 + 7 + 6, the first 7 from member 0's draw.
    past, pm = Pv[:5, :9], Mv[:5, :9]
    out = res.model.sample(past, pm, None, 20, generator_seed=0)
    assert out.poses.shape == (5, 20, 6, 17, 2)
    first = res.model.member_list()[0].sample(past, pm, None, 7, generator_seed=0)
    assert torch.allclose(out.poses[:, :7], first.poses)
    # The ensemble round-trips through a checkpoint.
    path = save_checkpoint(tmp_path / "ens.pt", res.model, wcfg, tcfg, res.history)
    ck = load_checkpoint(path)
    assert isinstance(ck.model, Ensemble) and len(ck.model.member_list()) == 3
    assert torch.equal(ck.model.error_scale, res.model.error_scale)
    assert ck.sampler == SNF_DEFAULT  # `--sampler default` is the GRU-SNF default
    assert evaluate_nll(ck.model, Pv, Mv) == pytest.approx(res.best_val_nll, abs=1e-6)
    with pytest.raises(ValueError, match="members"):
        train(tr, va, mcfg, TrainConfig(members=0), progress=False)
