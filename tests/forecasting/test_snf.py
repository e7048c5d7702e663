"""Stochastic blocks: invariance under the model target, path weights, acceptance."""

import pytest
import torch
from scipy import stats

from forecasting.flow import ConditionalFlow
from forecasting.samplers import sampler_by_name
from forecasting.snf import CHECKPOINT_SAMPLER, SamplerConfig, StochasticFlowSampler, acceptance
from tests.forecasting.test_flow import randomize

N = 6000


def _toy_flow(seed: int = 0) -> tuple[ConditionalFlow, list[torch.Tensor]]:
    torch.manual_seed(seed)
    flow = ConditionalFlow(2, 3, hidden=16, layers=4)
    randomize(flow, 0.15, seed)
    c = flow.context(torch.randn(1, 3))
    return flow, [t.expand(N, -1).contiguous() for t in c]


def _draw(flow: ConditionalFlow, ctx: list[torch.Tensor], cfg: SamplerConfig, seed: int):
    torch.manual_seed(seed)
    s = StochasticFlowSampler(flow, cfg)
    ctxm = torch.no_grad() if cfg.kernel == "mala" else torch.inference_mode()
    with ctxm:
        x, lw = s.sample(torch.randn(N, 2), ctx)
    return x, lw, s


@pytest.mark.parametrize(
    "cfg",
    [
        SamplerConfig(kernel="rwm", target="model", steps=3, step_size=0.5),
        SamplerConfig(kernel="mala", target="model", steps=3, step_size=1.0),
        SamplerConfig(kernel="rwm", target="model", steps=2, blocks=(5,), step_size=0.6),
        SamplerConfig(kernel="mala", target="model", steps=2, blocks=(0, 2), step_size=0.5),
    ],
    ids=["rwm-all", "mala-all", "rwm-data", "mala-z-mid"],
)
def test_model_target_leaves_the_flow_distribution_invariant(cfg: SamplerConfig) -> None:
    flow, ctx = _toy_flow()
    ref, _, _ = _draw(flow, ctx, SamplerConfig(), seed=10)
    x, lw, s = _draw(flow, ctx, cfg, seed=11)
    # Path weights toward the model density are exactly zero for the model target.
    assert lw.abs().max() < 1e-3
    # Moments agree within Monte-Carlo error ...
    se = ref.std(0) / N**0.5
    assert ((x.mean(0) - ref.mean(0)).abs() < 5 * se * 2**0.5).all()
    assert torch.allclose(x.std(0), ref.std(0), rtol=0.06)
    # ... and so do the marginals (two-sample Kolmogorov-Smirnov) and a projection.
    for v, r in ((x[:, 0], ref[:, 0]), (x[:, 1], ref[:, 1]), (x.sum(1), ref.sum(1))):
        assert stats.ks_2samp(v.numpy(), r.numpy()).pvalue > 0.001
    # The chains really moved.
    rates = acceptance(s.stats())
    assert all(0.05 < r < 0.99 for r in rates)


def test_invariance_test_has_power_a_tempered_target_changes_the_spread() -> None:
    flow, ctx = _toy_flow()
    ref, _, _ = _draw(flow, ctx, SamplerConfig(), seed=10)
    x, _, _ = _draw(
        flow,
        ctx,
        SamplerConfig(
            kernel="rwm", target="tempered", beta=0.3, steps=30, step_size=0.8, blocks=(5,)
        ),
        11,
    )
    assert (x.std(0) > 1.2 * ref.std(0)).all()
    assert stats.ks_2samp(x[:, 0].numpy(), ref[:, 0].numpy()).pvalue < 1e-6


@pytest.mark.parametrize("kernel", ["rwm", "mala"])
@pytest.mark.parametrize("target", ["point", "tempered"])
@pytest.mark.parametrize("blocks", [(5,), None], ids=["data", "all"])
def test_path_weights_recover_model_moments_from_a_different_proposal(
    kernel: str, target: str, blocks: tuple[int, ...] | None
) -> None:
    flow, ctx = _toy_flow(3)
    ref, _, _ = _draw(flow, ctx, SamplerConfig(), seed=1)
    mu = ref.mean(0) + 0.7 * ref.std(0)
    point = (mu.expand(N, -1), torch.log(0.8 * ref.std(0)))
    cfg = SamplerConfig(
        kernel=kernel, target=target, beta=0.3, steps=5, step_size=0.5, blocks=blocks
    )  # type: ignore[arg-type]
    torch.manual_seed(2)
    s = StochasticFlowSampler(flow, cfg)
    with torch.no_grad():
        x, lw = s.sample(torch.randn(N, 2), ctx, point)
    # The proposal differs from the model: shifted (point) or wider (tempered) ...
    if target == "point":
        assert (x.mean(0) - ref.mean(0))[1] > 0.25 * ref.std(0)[1]
    else:
        assert (x.std(0) > 1.05 * ref.std(0)).all()
    # ... and the importance weights bring the moments back to the model's.
    w = torch.softmax(lw, 0)[:, None]
    wmean = (w * x).sum(0)
    wstd = ((w * (x - wmean) ** 2).sum(0)).sqrt()
    assert ((wmean - ref.mean(0)).abs() < 0.15 * ref.std(0)).all()
    assert torch.allclose(wstd, ref.std(0), rtol=0.15)
    assert float(1 / (w**2).sum()) > 100  # effective sample size


def test_acceptance_in_a_sane_band_at_defaults_and_adaptation() -> None:
    flow, ctx = _toy_flow(4)
    _, _, s = _draw(flow, ctx, SamplerConfig(kernel="rwm", target="model"), seed=0)
    assert all(0.2 < r < 0.95 for r in acceptance(s.stats()))
    cfg = SamplerConfig(
        kernel="rwm", target="model", step_size=3.0, steps=20, adapt=True, target_accept=0.5
    )
    _, _, s2 = _draw(flow, ctx, cfg, seed=0)
    assert (s2.stats().step_sizes < 3.0).all()
    late = SamplerConfig(
        kernel="rwm", target="model", steps=5, step_size=float(s2.stats().step_sizes.mean())
    )
    _, _, s3 = _draw(flow, ctx, late, seed=1)
    assert all(0.3 < r < 0.75 for r in acceptance(s3.stats()))


def test_bad_block_position_is_rejected() -> None:
    flow, _ = _toy_flow()
    with pytest.raises(ValueError, match=r"block position 9 outside 0\.\.5"):
        StochasticFlowSampler(flow, SamplerConfig(kernel="rwm", blocks=(9,)))


def test_latent_space_blocks_with_the_pulled_back_target() -> None:
    """interpolate=False at block 0: MCMC in z against the final target pulled back to z."""
    flow, ctx = _toy_flow(5)
    ref, _, _ = _draw(flow, ctx, SamplerConfig(), seed=1)
    x, lw, s = _draw(
        flow,
        ctx,
        SamplerConfig(kernel="rwm", target="model", steps=4, blocks=(0,), interpolate=False),
        2,
    )
    assert lw.abs().max() < 1e-3 and 0.3 < acceptance(s.stats())[0] < 0.95
    assert stats.ks_2samp(x[:, 0].numpy(), ref[:, 0].numpy()).pvalue > 0.001
    t, lw_t, _ = _draw(
        flow,
        ctx,
        SamplerConfig(
            kernel="rwm", target="tempered", beta=0.3, steps=10, blocks=(0,), interpolate=False
        ),
        3,
    )
    assert (t.std(0) > 1.15 * ref.std(0)).all()
    w = torch.softmax(lw_t, 0)[:, None]
    wmean = (w * t).sum(0)
    assert ((wmean - ref.mean(0)).abs() < 0.15 * ref.std(0)).all()


def test_a_temperature_suffix_names_a_tempered_sampler() -> None:
    s = sampler_by_name("gru-nf-t0.5", 7)
    assert (s.name, s.temperature, s.kernel) == ("gru-nf-t0.5", 0.5, "none")
    own = sampler_by_name("default-t0.8", 7)
    assert (own.name, own.temperature, own.blocks) == ("gru-snf-t0.8", 0.8, (-1,))
    # a checkpoint trained now carries gru-snf-t0.8: its default-t<T> is renamed, not stacked
    new = CHECKPOINT_SAMPLER
    assert sampler_by_name("default-t0.8", 7, new) == new
    t6 = sampler_by_name("default-t0.6", 7, new)
    assert (t6.name, t6.temperature) == ("gru-snf-t0.6", 0.6)
    t1 = sampler_by_name("default-t1", 7, new)
    assert (t1.name, t1.temperature) == ("gru-snf-t1", 1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        sampler_by_name("gru-snf-t0", 7)
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        sampler_by_name("nope-t0.5", 7)
