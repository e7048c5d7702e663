"""The stillness term: a body that stops dead stands out, normal windows stay at 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.injection import inject, moving
from forecasting.posture import PostureConfig, PostureModel, fit_normal_stats
from forecasting.stillness import stillness
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
    # A posture model saved before the term loads without it: its fused score is unchanged.
    old = PostureConfig.from_dict(
        {k: v for k, v in PostureConfig().to_dict().items() if k != "stillness"}
    )
    assert not old.stillness
    model = PostureModel(old)
    motion, posture = torch.ones(4), torch.zeros(4)
    still = torch.full((4,), 50.0)
    assert torch.equal(model.fuse(motion, posture, still), model.fuse(motion, posture))
    with pytest.raises(ValueError, match="seen keypoints"):
        fit_normal_stats(PostureModel(PostureConfig(flows=1)), walk, None)
