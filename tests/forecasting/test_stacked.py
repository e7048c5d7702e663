"""The stacked (batched-ensemble) sampling path against the member-by-member one, per-window
seeds, and early stopping: same draws, same futures, same scores (float rounding aside)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from forecasting.metrics import apd
from forecasting.posture import PostureConfig, fit_normal_stats, train_posture
from forecasting.scoring import ScorerConfig, early_stop_bound, score_windows
from forecasting.snf import GRU_NF, SNF_DEFAULT, SamplerConfig
from forecasting.stacked import StackedForecaster, stacked_of
from forecasting.stillness import stillness
from forecasting.torch_model import GRUNF, Ensemble, ModelConfig
from forecasting.windows import Standardizer

SAMPLERS = [
    GRU_NF,
    SNF_DEFAULT,
    SNF_DEFAULT.with_(name="snf-2-steps", steps=2),
    GRU_NF.with_(name="gru-nf-t0.5", temperature=0.5),
    SNF_DEFAULT.with_(name="gru-snf-t0.7", temperature=0.7),
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ensemble(members: int = 3, gru_layers: int = 1) -> Ensemble:
    """Small members with random (not zero-initialised) weights, so every layer matters."""
    std = Standardizer(
        np.full(34, 0.1, np.float32),
        np.full(34, 0.5, np.float32),
        np.zeros(34, np.float32),
        np.full(34, 0.02, np.float32),
    )
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=24, flow_hidden=16, embed_dim=8, gru_layers=gru_layers)
    out = []
    for _ in range(members):
        m = GRUNF(cfg, std)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        out.append(m.eval())
    return Ensemble(out).eval()


def windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    poses = rng.normal(0, 0.3, (n, 25, 17, 2)).astype(np.float32)
    return poses, rng.random((n, 25, 17)) > 0.05


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.name)
@pytest.mark.parametrize("k", [9, 8])  # 3 each; 3, 3, 2
def test_stacked_futures_equal_member_by_member_per_group(sampler: SamplerConfig, k: int) -> None:
    ens = ensemble(gru_layers=2)
    past = torch.randn(5, 13, 17, 2) * 0.3
    mask = torch.rand(5, 13, 17) > 0.1
    groups = torch.tensor([0, 0, 1, 1, 1])
    gens = [torch.Generator().manual_seed(s) for s in (11, 22)]
    with torch.inference_mode():
        fast, _ = StackedForecaster(ens).sample(past, mask, k, sampler, gens, groups)
        exact = torch.cat(
            [
                ens.sample(
                    past[g], mask[g], None, k, sampler, generator=torch.Generator().manual_seed(s)
                ).poses
                for g, s in ((slice(0, 2), 11), (slice(2, 5), 22))
            ]
        )
    assert fast.shape == exact.shape == (5, k, 12, 17, 2)
    assert torch.allclose(fast, exact, atol=1e-5)
    assert float((fast - exact).abs().max()) > 0 or sampler.kernel == "none"  # not copied


def test_a_temperature_below_one_draws_a_narrower_set() -> None:
    """Base noise scaled by the temperature: the futures' spread (APD) shrinks with it."""
    ens = ensemble()
    past = torch.randn(4, 13, 17, 2) * 0.3
    mask = torch.ones(4, 13, 17, dtype=torch.bool)
    spread = {}
    for t in (1.0, 0.5):
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            out = ens.sample(past, mask, None, 12, GRU_NF.with_(temperature=t), generator=g)
        spread[t] = float(apd(out.poses).mean())
    assert spread[0.5] < 0.75 * spread[1.0], spread
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GRU_NF.with_(temperature=0.0)


@pytest.mark.parametrize("sampler", SAMPLERS[:2], ids=lambda s: s.name)
def test_scores_equal_the_exact_path_and_each_frame_scored_alone(sampler: SamplerConfig) -> None:
    ens = ensemble(4)
    poses, mask = windows(40)
    seeds = np.repeat(np.arange(10) * 7 + 3, 4)  # 10 "frames" of 4 persons
    cfg = ScorerConfig(num_samples=10, sampler=sampler, batch=16)
    fast = score_windows(ens, poses, mask, mask, cfg, seeds)
    exact = score_windows(ens, poses, mask, mask, replace(cfg, exact=True), seeds)
    np.testing.assert_allclose(fast.score, exact.score, atol=1e-5)
    np.testing.assert_allclose(fast.joints, exact.joints, atol=1e-5)
    for f in (0, 5, 9):  # a frame's persons scored in a call of their own, seeded alone
        sl = slice(4 * f, 4 * f + 4)
        alone = score_windows(
            ens, poses[sl], mask[sl], mask[sl], replace(cfg, seed=int(seeds[4 * f]))
        )
        np.testing.assert_allclose(alone.score, fast.score[sl], atol=1e-5)
    assert np.ptp(fast.score) > 0.1


@pytest.mark.parametrize("name", ["minhde", "minade", "fused"])
def test_early_stop_keeps_every_window_on_its_side_of_the_bound(name: str) -> None:
    ens = ensemble(4)
    poses, mask = windows(60, seed=1)
    if name == "fused":  # the default scorer: posture flows and the stillness term too
        posture = train_posture(poses, poses[:8], PostureConfig(flows=1, epochs=1), 0)
        rng = np.random.default_rng(0)
        fit_normal_stats(posture, poses, rng.normal(0.5, 0.2, 60), mask, 13)
        ens.posture = posture
        assert (
            float(
                posture.still_excess(
                    stillness(torch.as_tensor(poses), torch.as_tensor(mask), 13)
                ).max()
            )
            > 0
        )
    cfg = ScorerConfig(name=name, num_samples=12, sampler=GRU_NF, batch=32)  # type: ignore[arg-type]
    exact = score_windows(ens, poses, mask, mask, replace(cfg, exact=True))
    bound = float(np.quantile(exact.score, 0.5))
    early = score_windows(ens, poses, mask, mask, replace(cfg, stop_below=bound))
    stopped = early.score < bound
    assert stopped.sum() >= 15  # the bound is used: about half the windows stop
    # Below the bound: the first member's best is an upper bound of the full best-of-K.
    assert np.all(early.score >= exact.score - 1e-5)
    assert np.all(exact.score[stopped] < bound)
    # At or above it: all K futures were drawn, with the same draws as the exact path.
    np.testing.assert_allclose(early.score[~stopped], exact.score[~stopped], atol=1e-5)
    assert np.all(exact.score[~stopped] >= bound - 1e-5)


def test_a_weight_changed_in_place_rebuilds_the_stacked_copy() -> None:
    ens = ensemble(2)
    first = stacked_of(ens)
    assert stacked_of(ens) is first
    with torch.no_grad():
        ens.member_list()[1].point.bias.add_(1.0)
    second = stacked_of(ens)
    assert second is not first
    assert torch.allclose(second.w.state_b[1, 0, second.E :], ens.member_list()[1].point.bias)


def test_unsupported_samplers_fall_back_to_the_exact_path() -> None:
    ens = ensemble(2)
    poses, mask = windows(6)
    weighted = SNF_DEFAULT.with_(name="weighted", weights=True)
    assert not StackedForecaster(ens).supports(weighted)
    cfg = ScorerConfig(name="kde", num_samples=4, sampler=weighted, use_weights=True)
    a = score_windows(ens, poses, mask, mask, cfg)
    b = score_windows(ens, poses, mask, mask, replace(cfg, exact=True))
    np.testing.assert_array_equal(a.score, b.score)


def test_a_frame_is_never_split_across_two_model_batches() -> None:
    """Frames of 3 persons in batches of 16 windows: a frame straddling a batch edge gets
    the draws (and scores) of a call of its own; one larger than a batch is cut where its
    own call would cut it."""
    ens = ensemble(3)
    sizes = [3] * 7 + [20, 3]  # the 6th frame would straddle 16; the 8th exceeds a batch
    seeds = np.repeat(np.arange(len(sizes)) + 100, sizes)
    poses, mask = windows(len(seeds), seed=2)
    cfg = ScorerConfig(num_samples=9, sampler=SNF_DEFAULT, batch=16)
    together = score_windows(ens, poses, mask, mask, cfg, seeds)
    start = 0
    for n, seed in zip(sizes, seeds[np.r_[0, np.cumsum(sizes)[:-1]]], strict=True):
        sl = slice(start, start + n)
        alone = score_windows(ens, poses[sl], mask[sl], mask[sl], replace(cfg, seed=int(seed)))
        np.testing.assert_allclose(together.score[sl], alone.score, atol=1e-5)
        start += n


def test_the_early_stop_margin_is_in_the_scorers_units() -> None:
    """auto is each scorer's own margin (log error for minhde, fused units for fused); a
    number is taken in the served scorer's units; scorers that never stop get no bound."""
    assert early_stop_bound("minhde", 2.0, "auto") == pytest.approx(0.5)
    assert early_stop_bound("minfde", 2.0, "auto") == pytest.approx(0.5)
    assert early_stop_bound("fused", 5.5, "auto") == pytest.approx(2.5)
    assert early_stop_bound("fused", 5.5, 1.0) == pytest.approx(4.5)
    assert early_stop_bound("kde", 2.0, "auto") is None
    assert early_stop_bound("posture", 2.0, 1.0) is None
    with pytest.raises(ValueError, match="early stop margin 'fast'"):
        early_stop_bound("fused", 2.0, "fast")
