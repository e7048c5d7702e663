"""A value derived from a module's weights, rebuilt when the weights change.

Inference paths that repack a model's weights (:class:`forecasting.stacked.StackedForecaster`,
:class:`forecasting.posture.StackedFlows`) keep the packed copy in a :class:`WeightsCache`:
it is rebuilt when any parameter or buffer of the module is replaced by another tensor
(``module.weight = nn.Parameter(...)``), changed in place (optimiser steps and
``load_state_dict`` bump a tensor's version counter) or moved (``module.to(...)`` swaps the
storage), or when the caller's ``extra`` key (e.g. the window length) differs.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> cache = WeightsCache()
    >>> builds = []
    >>> def build() -> int:
    ...     builds.append(1)
    ...     return len(builds)
    >>> cache.get(lin, build), cache.get(lin, build), cache.get(lin, build, extra=24)
    (1, 1, 2)
    >>> with torch.no_grad():
    ...     _ = lin.weight.mul_(2)  # an in-place change: rebuilt on the next get
    >>> cache.get(lin, build, extra=24)
    3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

from torch import Tensor, nn

T = TypeVar("T")


class WeightsCache(Generic[T]):
    """Holds ``build()``'s value for one module's current weights (see the module doc)."""

    def __init__(self) -> None:
        self._tensors: list[Tensor] = []  # held, so no id is reused while cached
        self._versions: list[tuple[object, ...]] = []  # version, storage, device, dtype
        self._extra: object = None
        self._value: T | None = None
        self._built = False

    def get(self, module: nn.Module, build: Callable[[], T], extra: object = None) -> T:
        """The cached value, or ``build()`` when ``module``'s weights or ``extra`` changed."""
        tensors = _weights(module)
        versions: list[tuple[object, ...]] = [
            (t._version, t.data_ptr(), t.device, t.dtype) for t in tensors
        ]
        stale = (
            not self._built
            or extra != self._extra
            or versions != self._versions
            or any(a is not b for a, b in zip(tensors, self._tensors, strict=True))
        )
        if stale:  # the key is taken before the build: a change during it rebuilds next time
            self._value = build()
            self._tensors, self._versions = tensors, versions
            self._extra, self._built = extra, True
        return cast(T, self._value)


def _weights(module: nn.Module) -> list[Tensor]:
    """Every parameter and buffer of ``module`` and its submodules, in an order that depends
    only on the module tree: the tensors ``parameters()`` and ``buffers()`` give (unlike
    them, a tensor tied between two submodules comes twice: harmless here), without their
    recursive generators, which cost more than the check itself on a stacked ensemble
    (about a tenth of live scoring's time)."""
    out: list[Tensor] = []
    stack, seen = [module], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out += [t for t in m._parameters.values() if t is not None]
        out += [t for t in m._buffers.values() if t is not None]
        stack += [c for c in reversed(m._modules.values()) if c is not None]
    return out
