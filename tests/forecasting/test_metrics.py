import pytest
import torch

from forecasting import metrics


def _setup(B: int = 3, K: int = 5, H: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    truth = torch.randn(B, H, 17, 2)
    samples = truth[:, None] + torch.randn(B, K, H, 17, 2) * 0.1
    return samples, truth, torch.ones(B, H, 17, dtype=torch.bool)


def test_min_ade_fde_pick_the_best_sample() -> None:
    s, t, m = _setup()
    s[:, 2] = t  # a perfect sample
    assert torch.allclose(metrics.min_ade(s, t, m), torch.zeros(3))
    assert torch.allclose(metrics.min_fde(s, t, m), torch.zeros(3))
    s[:, 2, :, :, 0] += 3.0
    assert (metrics.min_ade(s, t, m) > 0.05).all()


def test_masked_keypoints_do_not_count() -> None:
    s, t, m = _setup()
    s[..., 4, :] += 100.0
    m[..., 4] = False
    assert (metrics.min_ade(s, t, m) < 0.5).all()
    assert (metrics.ade_of_mean(s, t, m) < 0.5).all()


def test_apd_of_two_points() -> None:
    s = torch.zeros(1, 2, 3, 17, 2)
    s[:, 1, ..., 0] = 3.0
    s[:, 1, ..., 1] = 4.0
    assert float(metrics.apd(s)[0]) == pytest.approx(5.0)
    assert float(metrics.apd(s[:, :1])[0]) == 0.0


def test_energy_score_prefers_calibrated_spread() -> None:
    torch.manual_seed(1)
    B, K = 400, 30
    truth = torch.randn(B, 2, 17, 2)
    m = torch.ones(B, 2, 17, dtype=torch.bool)
    calibrated = torch.randn(B, K, 2, 17, 2)
    too_narrow = torch.randn(B, K, 2, 17, 2) * 0.2
    too_wide = torch.randn(B, K, 2, 17, 2) * 3
    es = {
        n: float(metrics.energy_score(x, truth, m).mean())
        for n, x in (("cal", calibrated), ("narrow", too_narrow), ("wide", too_wide))
    }
    assert es["cal"] < es["narrow"] and es["cal"] < es["wide"]


def test_weights_and_ess() -> None:
    lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -50.0, -50.0, -50.0]])
    ess = metrics.effective_sample_size(lw)
    assert ess[0] == pytest.approx(4.0) and ess[1] == pytest.approx(1.0, abs=1e-6)
    s, t, m = _setup(B=2, K=4)
    s[1, 0] = t[1]
    w = metrics.normalized_weights(lw)
    assert float(metrics.ade_of_mean(s, t, m, w)[1]) == pytest.approx(0.0, abs=1e-4)


def test_rank_histogram_is_flat_for_a_calibrated_set_and_peaked_for_a_wide_one() -> None:
    """Truth and K samples from the same Gaussian: every rank ~1/(K+1), 2/(K+1) outside the
    samples' range, half in the middle half. Samples twice as wide: few outside, most in the
    middle; half as wide: many outside."""
    g = torch.Generator().manual_seed(0)
    B, K = 400, 19
    truth = torch.randn(B, 3, 17, 2, generator=g)
    mask = torch.ones(B, 3, 17, dtype=torch.bool)
    mask[:, :, 5] = False  # unseen keypoints do not count
    shares = {}
    for scale in (1.0, 2.0, 0.5):
        s = torch.randn(B, K, 3, 17, 2, generator=g) * scale
        hist = metrics.rank_histogram(s, truth, mask)
        assert hist.shape == (K + 1,) and int(hist.sum()) == B * 3 * 16 * 2
        shares[scale] = metrics.rank_shares(hist)
        if scale == 1.0:
            assert float((hist / hist.sum()).max()) < 1.3 / (K + 1)
    assert abs(shares[1.0][0] - 2 / (K + 1)) < 0.01
    assert abs(shares[1.0][1] - shares[1.0][2]) < 0.03 and shares[1.0][2] == 10 / 20
    assert shares[2.0][0] < 0.02 and shares[2.0][1] > 0.7, shares
    assert shares[0.5][0] > 0.35
