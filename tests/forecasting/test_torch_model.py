from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.checkpoint import load_checkpoint, save_checkpoint
from forecasting.snf import GRU_NF, SamplerConfig
from forecasting.torch_model import GRUNF, ModelConfig, to_tensor
from forecasting.windows import Standardizer, WindowConfig, cut_windows, fill_unseen
from tests.forecasting.test_flow import randomize

SMALL = ModelConfig(t_obs=6, horizon=4, hidden=32, flow_layers=4, flow_hidden=32, embed_dim=16)


def _data(seed: int = 0) -> tuple[GRUNF, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    T = 80
    base = rng.uniform(-50, 50, (17, 2))
    walk = np.cumsum(rng.normal(0, 2, (T, 1, 2)), 0)
    kp = np.zeros((T, 17, 3), np.float32)
    kp[..., :2] = 500 + base + walk + rng.normal(0, 1, (T, 17, 2))
    kp[..., 2] = 1
    w = cut_windows(kp, WindowConfig(t_obs=6, horizon=4), stride=3)
    std = Standardizer.fit(w)
    torch.manual_seed(seed)
    model = GRUNF(SMALL, std)
    return model, to_tensor(fill_unseen(w.poses, std.pose_mean)), to_tensor(w.mask)


def test_gradients_reach_every_parameter() -> None:
    model, P, M = _data()
    randomize(model, 0.05)
    out = model(P, M)
    loss = -(out.log_prob.mean() + out.point_log_prob.mean())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reaches {missing}"


def test_log_prob_is_the_future_part_of_the_teacher_forced_density() -> None:
    model, P, M = _data()
    randomize(model, 0.05)
    with torch.no_grad():
        full = model(P, M, first=2)
        fut = model.log_prob(P, M)
    assert full.log_prob.shape == (P.shape[0], 9)
    assert torch.allclose(full.log_prob[:, -4:].sum(-1), fut, atol=1e-4)


def test_sampling_shapes_seeds_and_coherent_rollouts() -> None:
    model, P, M = _data()
    randomize(model, 0.05)
    past, pm = P[:5, :7], M[:5, :7]
    a = model.sample(past, pm, num_samples=8, generator_seed=3)
    b = model.sample(past, pm, num_samples=8, generator_seed=3)
    assert a.poses.shape == (5, 8, 4, 17, 2)
    assert torch.equal(a.poses, b.poses)
    assert torch.equal(a.log_weights, torch.zeros(5, 8))
    # Samples differ from each other, and start near the last observed pose.
    assert a.poses.std(1).mean() > 0
    step1 = (a.poses[:, :, 0] - past[:, None, -1]).abs().mean()
    assert step1 < 1.0
    mf = model.sample(
        past, pm, num_samples=8, sampler=GRU_NF.with_(mean_feedback=True), generator_seed=3
    )
    assert mf.poses.shape == a.poses.shape and torch.isfinite(mf.poses).all()
    snf = model.sample(
        past, pm, num_samples=8, sampler=SamplerConfig(kernel="mala", target="point", steps=1)
    )
    assert torch.isfinite(snf.log_weights).all() and snf.stats.proposed.sum() == 5 * 8 * 4 * 5


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model, P, M = _data()
    randomize(model, 0.05)
    path = save_checkpoint(tmp_path / "m.pt", model, WindowConfig(t_obs=6, horizon=4))
    ck = load_checkpoint(path)
    with torch.no_grad():
        assert torch.allclose(ck.model.log_prob(P, M), model.log_prob(P, M), atol=1e-5)
    assert ck.window_config.t_obs == 6 and ck.meta["code_version"]
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="posewatch train"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.slow
def test_trained_flow_reconstructs_real_frames(aihub2: Path, trained_checkpoint: Path) -> None:
    """x -> z -> x on real test frames through a trained model (contexts from the GRU)."""
    from forecasting.train import build_windows
    from pipelines.tracks import load_tracks

    ck = load_checkpoint(trained_checkpoint)
    m = ck.model
    w = build_windows(load_tracks(aihub2, "test"), ck.window_config, 16, normal_only=False)
    P = to_tensor(fill_unseen(w.poses, m.pose_mean.numpy()))
    M = to_tensor(w.mask)
    with torch.no_grad():
        feats, target = m.features(P, M)
        out, _ = m.gru(feats)
        t0 = m.cfg.t_obs
        h = out[:, t0 - 1 : -1].reshape(-1, out.shape[-1])
        x = target[:, t0:].reshape(-1, 34)
        ctx = m.flow.context(h)
        z, _ = m.flow.f(x, ctx)
        x2, _ = m.flow.g(z, ctx)
    assert x.shape[0] > 20_000
    assert float((x - x2).abs().max()) < 1e-4
