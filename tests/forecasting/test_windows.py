import numpy as np
import pytest

from forecasting.windows import (
    Standardizer,
    WindowConfig,
    augment_flip,
    cut_windows,
    fill_gaps,
    fill_unseen,
    normal_starts,
)


def _walker(
    T: int = 60, x0: float = 500.0, speed: float = 3.0, height: float = 200.0
) -> np.ndarray:
    """A rigid stick person moving right: (T, 17, 3) pixels."""
    rng = np.random.default_rng(0)
    template = np.stack([rng.uniform(-0.2, 0.2, 17), np.linspace(-0.5, 0.5, 17)], -1)
    kp = np.zeros((T, 17, 3), np.float32)
    for t in range(T):
        kp[t, :, :2] = template * height + (x0 + speed * t, 400.0)
        kp[t, :, 2] = 0.9
    return kp


def test_fill_gaps_interpolates_short_and_keeps_long_gaps() -> None:
    xy = np.arange(20, dtype=np.float32)[:, None, None].repeat(17, 1).repeat(2, 2)
    xy[3:5, 0] = np.nan  # 2-frame interior gap
    xy[8:18, 1] = np.nan  # 10-frame interior gap
    xy[0:2, 2] = np.nan  # head
    out = fill_gaps(xy, max_gap=4)
    np.testing.assert_allclose(out[3:5, 0, 0], [3, 4])
    assert np.isnan(out[8:18, 1]).all()
    np.testing.assert_allclose(out[0:2, 2, 0], [2, 2])


def test_normalisation_removes_place_and_size_but_keeps_motion() -> None:
    cfg = WindowConfig(t_obs=8, horizon=4)
    a = cut_windows(_walker(x0=300, height=100, speed=1.5), cfg, stride=5)
    b = cut_windows(_walker(x0=1200, height=300, speed=4.5), cfg, stride=5)
    assert len(a) == len(b) == 10
    # Same motion relative to size -> identical normalised windows.
    np.testing.assert_allclose(a.poses, b.poses, atol=1e-4)
    # Centre of the torso at the last observed frame is the origin.
    torso = a.poses[:, cfg.t_obs, [5, 6, 11, 12]].mean(1)
    np.testing.assert_allclose(torso, 0, atol=1e-5)
    # ref maps back to pixels.
    px = a.poses * a.ref[:, None, None, 2:3] + a.ref[:, None, None, :2]
    np.testing.assert_allclose(px[0], _walker(x0=300, height=100, speed=1.5)[:13, :, :2], atol=1e-2)
    # A faster walker gives larger displacements.
    c = cut_windows(_walker(speed=9.0), cfg, stride=5)
    assert (
        np.abs(np.diff(c.poses[..., 0], axis=1)).mean()
        > 2 * np.abs(np.diff(a.poses[..., 0], axis=1)).mean()
    )


def test_missing_keypoints_are_masked_and_filled_with_the_mean() -> None:
    kp = _walker(40)
    kp[:, 3, :2] = np.nan  # never seen
    kp[10:12, 4, :2] = np.nan  # short gap
    w = cut_windows(kp, WindowConfig(t_obs=8, horizon=4), stride=3)
    assert not w.mask[..., 3].any() and w.mask[..., 4].all()
    assert not w.visible[:, :, 4].all() and w.visible[..., 5].all()
    std = Standardizer.fit(w)
    filled = fill_unseen(w.poses, std.pose_mean)
    assert np.isfinite(filled).all()


def test_normal_starts_skip_windows_touching_anomalies() -> None:
    cfg = WindowConfig(t_obs=4, horizon=4)
    labels = np.zeros(50, np.uint8)
    labels[20] = 1
    frames = np.arange(5, 45)
    starts = normal_starts(labels, frames, cfg, stride=1)
    rows = frames[starts]
    assert all(not (r <= 20 < r + cfg.length) for r in rows)
    assert len(starts) == (40 - 9 + 1) - 9


def test_flip_mirrors_x_and_swaps_sides() -> None:
    w = cut_windows(_walker(30), WindowConfig(t_obs=8, horizon=4), stride=5)
    flip = list(range(17))
    flip[5], flip[6] = 6, 5
    f = augment_flip(w, flip)
    np.testing.assert_allclose(f.poses[:, :, 5, 0], -w.poses[:, :, 6, 0])
    np.testing.assert_allclose(f.poses[:, :, 0, 1], w.poses[:, :, 0, 1])


def test_standardizer_round_trip() -> None:
    w = cut_windows(_walker(40), WindowConfig(t_obs=8, horizon=4), stride=2)
    s = Standardizer.fit(w)
    back = Standardizer.from_dict(s.to_dict())
    np.testing.assert_array_equal(back.disp_std, s.disp_std)
    assert s.pose_std.shape == (34,) and (s.disp_std > 0).all()
    with pytest.raises(TypeError):
        Standardizer.from_dict({"pose_mean": [0.0]})
