"""The best-of-K scorers (minade, minfde, minhde): the per-joint error scale (fitted on normal
windows, saved, applied), the horizon weights, and several scorers from one draw."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from forecasting.checkpoint import (
    load_checkpoint,
    read_checkpoint_file,
    save_checkpoint,
    write_checkpoint_file,
)
from forecasting.scoring import (
    POSTURE_SCORERS,
    SAMPLE_SCORERS,
    ScorerConfig,
    fit_error_scale,
    score_windows,
    score_windows_many,
)
from forecasting.torch_model import GRUNF, ModelConfig
from forecasting.windows import Standardizer, WindowConfig, Windows, cut_windows, fill_unseen
from tests.forecasting.test_flow import randomize

SMALL = ModelConfig(t_obs=6, horizon=4, hidden=32, flow_layers=4, flow_hidden=32, embed_dim=16)
WCFG = WindowConfig(t_obs=6, horizon=4)
NOISY = 9  # left wrist: detector jitter 8x the other joints'


def _windows(seed: int = 0) -> Windows:
    rng = np.random.default_rng(seed)
    T = 200
    base = rng.uniform(-50, 50, (17, 2))
    walk = np.cumsum(rng.normal(0, 2, (T, 1, 2)), 0)
    noise = rng.normal(0, 1, (T, 17, 2))
    noise[:, NOISY] *= 8
    kp = np.zeros((T, 17, 3), np.float32)
    kp[..., :2] = 500 + base + walk + noise
    kp[..., 2] = 1
    return cut_windows(kp, WCFG, stride=2)


def _model(w: Windows) -> GRUNF:
    torch.manual_seed(0)
    model = GRUNF(SMALL, Standardizer.fit(w))
    randomize(model, 0.05)
    return model.eval()


def test_scale_is_each_joints_typical_best_of_k_error() -> None:
    w = _windows()
    model = _model(w)
    assert torch.equal(model.error_scale, torch.ones(17))  # unscaled until fitted
    scale = fit_error_scale(model, w.poses, w.mask, w.visible, num_samples=20, seed=0)
    assert torch.allclose(model.error_scale, torch.as_tensor(scale))
    others = np.delete(scale, NOISY)
    # The jittery joint's typical error is several times the others'.
    assert scale[NOISY] > 3 * np.median(others), scale
    # Scaled, every joint's error is of order 1 on the windows it was fitted on.
    s = score_windows(model, w.poses, w.mask, w.visible, ScorerConfig(name="minade"))
    med = np.nanmedian(s.joints, axis=0)
    assert np.all((med > 0.5) & (med < 2.0)), med
    # ... so the noisy joint no longer dominates the per-joint contributions.
    assert med[NOISY] < 2 * np.median(np.delete(med, NOISY))


def test_log_error_is_the_log_of_the_scaled_best_of_k_error() -> None:
    w = _windows(1)
    model = _model(w)
    fit_error_scale(model, w.poses, w.mask, w.visible)
    raw = score_windows(model, w.poses, w.mask, w.visible, ScorerConfig("minade", log_error=False))
    log = score_windows(model, w.poses, w.mask, w.visible, ScorerConfig("minade"))
    np.testing.assert_allclose(log.score, np.log(raw.score), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log.joints, raw.joints, rtol=1e-5)


def test_scale_is_saved_and_old_checkpoints_load_unscaled(tmp_path: Path) -> None:
    w = _windows(2)
    model = _model(w)
    scale = fit_error_scale(model, w.poses, w.mask, w.visible)
    path = save_checkpoint(tmp_path / "m.pt", model, WCFG)
    np.testing.assert_allclose(load_checkpoint(path).model.error_scale.numpy(), scale)
    meta, tensors = read_checkpoint_file(path)
    del tensors["error_scale"]  # a checkpoint written before the scale existed
    write_checkpoint_file(path, meta, tensors)
    assert torch.equal(load_checkpoint(path).model.error_scale, torch.ones(17))


def test_horizon_weighted_scorers_and_one_draw_for_many() -> None:
    w = _windows(3)
    model = _model(w)
    fit_error_scale(model, w.poses, w.mask, w.visible)
    cfg = ScorerConfig("minhde", num_samples=8, log_error=False)
    motion = tuple(k for k in SAMPLE_SCORERS if k not in POSTURE_SCORERS)  # no posture flows here
    many = score_windows_many(model, w.poses, w.mask, w.visible, cfg, motion)
    for name in motion:  # one shared draw gives each scorer its own-run scores
        alone = score_windows(model, w.poses, w.mask, w.visible, replace(cfg, name=name))
        np.testing.assert_allclose(many[name].score, alone.score, rtol=1e-5, atol=1e-6)
    # Recompute the three best-of-K errors by hand from the same draw of futures.
    n_obs = 1 + SMALL.t_obs
    P = torch.as_tensor(fill_unseen(w.poses, model.standardizer().pose_mean))
    V = torch.as_tensor(w.visible[:, n_obs:] & w.mask[:, n_obs:]).float()
    torch.manual_seed(cfg.seed)
    with torch.inference_mode():
        smp = model.sample(P[:, :n_obs], torch.as_tensor(w.mask[:, :n_obs]), None, 8).poses
    d = torch.linalg.vector_norm(smp - P[:, None, n_obs:], dim=-1) / model.error_scale
    h = torch.arange(1, SMALL.horizon + 1, dtype=torch.float32)
    for name, weight in (("minade", torch.ones(4)), ("minfde", (h == 4).float()), ("minhde", h**3)):
        vw = V[:, None] * weight[None, None, :, None]
        expect = ((d * vw).sum((2, 3)) / vw.sum((2, 3))).min(1).values
        np.testing.assert_allclose(many[name].score, expect.numpy(), rtol=1e-4)
    # The last frames dominate minhde (weights 1, 8, 27, 64 against minade's equal quarter):
    # a shift of the last frame moves it up to 2.6x as much as minade, one of the first 1/25.
    late = w.poses.copy()
    late[:, -1] += 0.3
    early = w.poses.copy()
    early[:, n_obs] += 0.3
    s = {
        k: score_windows_many(model, x, w.mask, w.visible, cfg, ("minade", "minhde"))
        for k, x in (("late", late), ("early", early))
    }
    assert np.median(s["late"]["minhde"].score / s["late"]["minade"].score) > 1.5
    assert np.median(s["early"]["minhde"].score / s["early"]["minade"].score) < 0.5
