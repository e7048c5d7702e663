import pytest
import torch

from forecasting.flow import ConditionalFlow, default_masks, pose_masks


def randomize(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Give zero-initialised output layers random weights so the flow is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_density_integrates_to_one_on_a_2d_grid() -> None:
    torch.manual_seed(0)
    flow = ConditionalFlow(2, 3, hidden=16, layers=4)
    randomize(flow, 0.4)
    ctx = flow.context(torch.randn(1, 3))
    n = 801
    g = torch.linspace(-12, 12, n)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], -1)
    with torch.no_grad():
        lp = flow.log_prob(pts, [c.expand(pts.shape[0], -1) for c in ctx])
    cell = (g[1] - g[0]) ** 2
    total = float(lp.exp().sum() * cell)
    assert total == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("layers", [1, 4, 6])
def test_reconstruction_and_logdet(layers: int) -> None:
    torch.manual_seed(1)
    flow = ConditionalFlow(
        34, 8, hidden=32, layers=layers, masks=default_masks(34, layers, pose_masks())
    )
    randomize(flow, 0.05)
    ctx = flow.context(torch.randn(64, 8))
    x = torch.randn(64, 34) * 2
    with torch.no_grad():
        z, ld_f = flow.f(x, ctx)
        x2, ld_g = flow.g(z, ctx)
    z_scale = float(z.abs().max())
    assert z_scale > 1.0 and float((z - x).abs().max()) > 0.1  # the flow is not the identity
    assert (x - x2).abs().max() < 1e-4
    assert torch.allclose(ld_f, -ld_g, atol=1e-4)
    # Intermediate spaces compose: x -> y_k -> z equals x -> z.
    k = flow.num_layers // 2
    yk, ld1 = flow.f(x, ctx, stop=k)
    z2, ld2 = flow.f(yk, ctx, start=k)
    assert torch.allclose(z, z2, atol=1e-5) and torch.allclose(ld_f, ld1 + ld2, atol=1e-4)


def test_logdet_matches_autograd_jacobian() -> None:
    torch.manual_seed(2)
    flow = ConditionalFlow(4, 2, hidden=8, layers=3)
    randomize(flow, 0.5)
    ctx = flow.context(torch.randn(1, 2))
    z = torch.randn(1, 4)
    jac = torch.autograd.functional.jacobian(lambda v: flow.g(v, ctx)[0], z)[0, :, 0, :]
    _, ld = flow.g(z, ctx)
    assert float(ld) == pytest.approx(float(torch.logdet(jac)), abs=1e-4)
