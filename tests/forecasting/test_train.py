from pathlib import Path

import pytest
import torch

from detector.skeleton import FLIP_INDEX
from forecasting.torch_model import GRUNF, ModelConfig, to_tensor
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
