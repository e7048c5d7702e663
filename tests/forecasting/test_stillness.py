"""The stillness term: a body that stops dead stands out, normal windows stay at 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.injection import inject, moving
from forecasting.posture import PostureConfig, PostureModel, fit_normal_stats
from forecasting.stillness import past_log_speed, stillness
from forecasting.windows import Standardizer, WindowConfig, Windows, fill_unseen
from pipelines.offline.evaluation import normal_window_sets
from tests.conftest import held_out_clips


@pytest.fixture(scope="module")
def real_sets(aihub2: Path) -> tuple[Windows, Windows, Standardizer]:
    """Normal windows of two held-out AIHub2 train clips and of the test split, stride 9."""
    sets = normal_window_sets(aihub2, held_out_clips(aihub2), WindowConfig(), 9)
    return sets["validation"], sets["test"], Standardizer.fit(sets["validation"])


def _excess(model: PostureModel, poses: np.ndarray, w: Windows, std: Standardizer) -> np.ndarray:
    n_obs = 1 + WindowConfig().t_obs
    p = torch.as_tensor(fill_unseen(poses, std.pose_mean))
    seen = torch.as_tensor(w.visible & w.mask)
    return model.still_excess(stillness(p, seen, n_obs)).numpy()


def _slow_to_a_stop(w: Windows, n_obs: int, frames: int) -> np.ndarray:
    """The future's steps shrink linearly to nothing over ``frames`` frames."""
    p = w.poses.copy()
    for i in range(p.shape[1] - n_obs):
        k = max(0.0, 1 - (i + 1) / frames)
        p[:, n_obs + i] = p[:, n_obs + i - 1] + k * (
            w.poses[:, n_obs + i] - w.poses[:, n_obs + i - 1]
        )
    return p


def test_stillness_sees_a_body_stop_and_stays_quiet_on_normal_windows(
    real_sets: tuple[Windows, Windows, Standardizer],
) -> None:
    """Fitted on one set of held-out normal windows (walkers), the excess is 0 on ~99% of
    them and on ~93% of the test split's normal windows (people who mostly stand; measured
    1.0% / 6.5% above 0). Moving people who freeze (dead, after slowing over 4 frames, or
    frozen with noise at a tenth of their own motion) get a large excess on both sets
    (measured: freeze 1st percentile 12.4 / 6.0; slowing: 99.5% / 96.1% above 1; noisy
    freeze 1st percentile 4.2 / 3.2)."""
    va, te, std = real_sets
    t_obs = WindowConfig().t_obs
    n_obs = 1 + t_obs
    model = PostureModel(PostureConfig(flows=1))
    fit_normal_stats(model, fill_unseen(va.poses, std.pose_mean), None, va.visible & va.mask, n_obs)
    assert float(model.still_std) == pytest.approx(0.31, abs=0.1)  # log units
    rng = np.random.default_rng(0)
    for name, w, quiet in (("validation", va, 0.02), ("test", te, 0.10)):
        normal = _excess(model, w.poses, w, std)
        assert (normal > 0).mean() <= quiet, name
        assert np.percentile(normal, 99.5) < 3.0, name
        mv = moving(w, t_obs)
        frozen = inject(mv, "freeze", t_obs, rng)
        assert np.percentile(_excess(model, frozen, mv, std), 1) > 4.0, name
        slowing = _excess(model, _slow_to_a_stop(mv, n_obs, 4), mv, std)
        assert (slowing > 1.0).mean() >= 0.9, name
        motion = np.nanmean(np.linalg.norm(np.diff(mv.poses[:, :n_obs], axis=1), axis=-1), (1, 2))
        noise = rng.normal(0, 1, frozen.shape).astype(np.float32)
        noise[:, :n_obs] = 0
        noisy = frozen + noise * (0.1 * motion / np.sqrt(2))[:, None, None, None]
        assert np.percentile(_excess(model, noisy, mv, std), 1) > 2.0, name


def test_stillness_needs_evidence_and_old_posture_models_keep_their_score() -> None:
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.normal(0, 0.01, (4, 25, 17, 2)), axis=1).astype(np.float32)
    mask = np.ones((4, 25, 17), bool)
    frozen = walk.copy()
    frozen[:, 13:] = walk[:, 12:13]
    s = stillness(torch.as_tensor(frozen), torch.as_tensor(mask), 13)
    assert bool((s > 4).all())  # log(0.014 / 1e-4)
    blind = mask.copy()
    blind[:, 13:] = False  # nothing seen in the future: no evidence of anything
    s = stillness(torch.as_tensor(frozen), torch.as_tensor(blind), 13)
    np.testing.assert_array_equal(s.numpy(), 0.0)
    # A posture model saved before the term (and before the speed-conditioned motion part)
    # loads without it: its fused score is unchanged.
    old = PostureConfig.from_dict(
        {
            k: v
            for k, v in PostureConfig().to_dict().items()
            if k not in ("stillness", "speed_conditioned")
        }
    )
    assert not old.stillness and not old.speed_conditioned
    model = PostureModel(old)
    motion, posture = torch.ones(4), torch.zeros(4)
    still = torch.full((4,), 50.0)
    assert torch.equal(model.fuse(motion, posture, still), model.fuse(motion, posture))
    with pytest.raises(ValueError, match="seen keypoints"):
        fit_normal_stats(PostureModel(PostureConfig(flows=1)), walk, None)


def test_the_motion_part_is_standardised_against_people_who_moved_alike() -> None:
    """Normal windows whose motion score rises with their observed log speed (0.5 per log
    unit, residual spread 0.1): the fit finds the line and the residual spread, the 1st and
    99th percentiles of the speed bound it in the fit and in scoring alike (a faster or
    slower window is measured at the edge, not extrapolated; three far faster windows
    whose score stops rising do not bend the line), a window of unknown speed is measured
    at the mean speed, a handful of windows keeps the pooled spread, and an old model
    (saved before the term) keeps its pooled mean and spread."""
    rng = np.random.default_rng(0)
    n, n_obs = 400, 13
    step = np.exp(rng.uniform(np.log(0.001), np.log(0.02), n))  # per frame, along x
    step[-3:] = 0.2  # three far faster than the rest (beyond the 99th percentile)
    t = np.arange(25, dtype=np.float32)[None, :, None]
    poses = np.zeros((n, 25, 17, 2), np.float32)
    poses[..., 0] = rng.normal(0, 0.2, (n, 1, 17)) + step[:, None, None] * t
    poses[..., 1] = rng.normal(0, 0.4, (n, 1, 17))
    seen = np.ones((n, 25, 17), bool)
    seen[:8, :n_obs] = False  # 8 windows whose past was never seen: speed unknown
    v = past_log_speed(torch.as_tensor(poses), torch.as_tensor(seen), n_obs).numpy()
    assert np.isnan(v[:8]).all()
    np.testing.assert_allclose(v[8:], np.log(step[8:] + 1e-4), rtol=1e-4)
    known = np.log(step + 1e-4)
    known[:8] = known[8:-3].mean()  # the unknown ones move typically
    known[-3:] = known[:-3].max()  # the motion score of the fast three: as at the edge
    motion = (0.3 + 0.5 * known + rng.normal(0, 0.1, n)).astype(np.float32)
    model = PostureModel(PostureConfig(flows=1, steps=2))
    fit_normal_stats(model, poses, motion, seen, n_obs)
    assert float(model.motion_slope) == pytest.approx(0.5, abs=0.02)
    assert float(model.motion_std) == pytest.approx(0.1, abs=0.01)  # pooled: 0.43
    lo, hi = np.quantile(v[8:], [0.01, 0.99])
    assert (float(model.speed_lo), float(model.speed_hi)) == pytest.approx((lo, hi), abs=1e-3)
    # Scored as fitted (unknown speed at the mean, the same clamp): the normal windows' own
    # z has mean 0 and spread 1 to rounding.
    z = model.motion_z(torch.as_tensor(motion), torch.as_tensor(v)).numpy()
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1.0, abs=0.01)
    # A handful of windows: no line through them (its residuals would be ~0), pooled spread.
    few = PostureModel(PostureConfig(flows=1, steps=2))
    fit_normal_stats(few, poses[8:18], motion[8:18], seen[8:18], n_obs)
    assert float(few.motion_slope) == 0.0
    assert float(few.motion_std) == pytest.approx(float(np.std(motion[8:18], ddof=1)), rel=1e-4)
    # Faster than any normal window: measured at the edge (the line extrapolated 3 log
    # units on would expect 1.5 more, -15 sd).
    probe = torch.tensor([0.3 + 0.5 * hi, 0.3 + 0.5 * hi])
    far = model.motion_z(probe, torch.tensor([hi, hi + 3.0]))
    assert torch.allclose(far[0], far[1]) and abs(float(far[0])) < 0.3
    unknown = model.motion_z(probe[:1], torch.tensor([float("nan")]))
    at_mean = model.motion_z(probe[:1], model.speed_mean.reshape(1))
    assert torch.equal(unknown, at_mean)
    # Saved before the speed conditioning: the pooled mean and spread, no speed needed.
    old = PostureModel(PostureConfig.from_dict({"flows": 1, "steps": 2}))
    fit_normal_stats(old, poses, motion, seen, n_obs)
    assert not old.cfg.speed_conditioned and float(old.motion_std) > 0.35
    np.testing.assert_allclose(
        old.motion_z(torch.as_tensor(motion)).numpy(),
        (motion - motion.mean()) / motion.std(ddof=1),
        rtol=1e-4,
        atol=1e-4,
    )
