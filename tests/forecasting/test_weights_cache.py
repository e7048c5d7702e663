"""The weights cache rebuilds on every kind of change deep in a module tree, and only then."""

from __future__ import annotations

import torch
from torch import nn

from forecasting.weights_cache import WeightsCache


def tree() -> nn.Module:
    """Three levels deep, a buffer at the bottom, one Linear shared by two parents."""
    shared = nn.Linear(3, 3)
    inner = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), shared)
    return nn.Sequential(nn.Sequential(inner, nn.ReLU()), shared)


def test_each_kind_of_change_deep_in_the_tree_rebuilds_once() -> None:
    model = tree()
    cache: WeightsCache[int] = WeightsCache()
    builds = []

    def build() -> int:
        builds.append(1)
        return len(builds)

    assert [cache.get(model, build) for _ in range(3)] == [1, 1, 1]
    deep = model[0][0]
    changes = [
        lambda: deep[0].weight.mul_(2),  # in place, as an optimiser step (the version counter)
        lambda: setattr(deep[0], "weight", nn.Parameter(torch.zeros(3, 3))),  # replaced
        lambda: deep[1].running_mean.add_(1.0),  # a buffer, in place
        lambda: setattr(deep[1], "running_var", torch.ones(3)),  # a buffer, replaced
        lambda: deep.__setitem__(0, nn.Linear(3, 3)),  # a submodule replaced
        lambda: deep[2].register_buffer("extra", torch.zeros(1)),  # a buffer added
        lambda: model.to(torch.float64),  # moved: new storage and dtype
    ]
    for i, change in enumerate(changes, start=2):
        with torch.no_grad():
            change()
        assert cache.get(model, build) == i, f"change {i - 2} not seen"
        assert cache.get(model, build) == i, f"change {i - 2} rebuilt twice"
