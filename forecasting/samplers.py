"""The sampler registry: every named way of drawing futures, and lookup by name.

``default_samplers(L)`` lists GRU-NF, the authors' mean-feedback decoding and the GRU-SNF
variants kept in tables; variants that place MCMC blocks by layer position need the model's
flow layer count ``L`` (a cold-start model has fewer layers than a trained one).
``sampler_by_name`` resolves a name for a given model: ``default`` is the checkpoint's own
sampler (``gru-snf-t0.8`` for a model trained now:
:data:`forecasting.snf.CHECKPOINT_SAMPLER`). Any name may end in ``-t<T>``: that
sampler with the flow's base noise at temperature ``T`` (``z ~ N(0, T^2)``; below 1 draws
sharper sets of futures). A tempered sampler keeps its own name, so a threshold calibrated
at one temperature is never served at another.

Example:
    >>> [s.name for s in default_samplers(7)][:3]
    ['gru-nf', 'gru-nf-meanfb', 'gru-snf']
    >>> sampler_by_name("gru-nf", num_layers=5).name
    'gru-nf'
    >>> s = sampler_by_name("default-t0.8", num_layers=7)
    >>> s.name, s.temperature, s.kernel
    ('gru-snf-t0.8', 0.8, 'rwm')
    >>> from forecasting.snf import CHECKPOINT_SAMPLER  # what a model trained now carries
    >>> sampler_by_name("default-t0.8", 7, CHECKPOINT_SAMPLER) == CHECKPOINT_SAMPLER
    True
    >>> sampler_by_name("default-t0.6", 7, CHECKPOINT_SAMPLER).name
    'gru-snf-t0.6'
"""

from __future__ import annotations

import re
from typing import Any

from forecasting.defaults import DEFAULT_SAMPLER
from forecasting.snf import GRU_NF, SNF_DEFAULT, SamplerConfig


def default_samplers(L: int) -> list[SamplerConfig]:
    """GRU-NF, the authors' mean-feedback decoding, and the GRU-SNF variants kept in tables.

    Arguments:
        L: layers of the model's flow (``model.flow.num_layers``: couplings + the final
            affine; 7 for the default architecture, 5 for a cold-start model). Required: a
            wrong count places blocks outside the flow.
    """
    latent: dict[str, Any] = {"blocks": (0,), "interpolate": False, "step_size": 0.5}
    return [
        GRU_NF,
        GRU_NF.with_(name="gru-nf-meanfb", mean_feedback=True),
        SNF_DEFAULT,
        SNF_DEFAULT.with_(name="gru-snf-weighted", weights=True),
        SamplerConfig(name="snf-latent-point", kernel="rwm", target="point", steps=2, **latent),  # type: ignore[arg-type]
        SamplerConfig(name="snf-latent-model", kernel="rwm", target="model", steps=1, **latent),  # type: ignore[arg-type]
        SamplerConfig(
            name="snf-latent-tempered0.7",
            kernel="rwm",
            target="tempered",
            beta=0.7,
            steps=1,
            **latent,
        ),  # type: ignore[arg-type]
        SamplerConfig(
            name="snf-latent-tempered0.5",
            kernel="rwm",
            target="tempered",
            beta=0.5,
            steps=2,
            **latent,
        ),  # type: ignore[arg-type]
        SamplerConfig(
            name="snf-latent-mala-tempered0.5",
            kernel="mala",
            target="tempered",
            beta=0.5,
            steps=1,
            blocks=(0,),
            interpolate=False,
            step_size=0.6,
        ),
        SamplerConfig(
            name="snf-paper-point-all",
            kernel="rwm",
            target="point",
            steps=2,
            adapt=True,
            target_accept=0.4,
        ),
        SamplerConfig(
            name="snf-interp-tempered0.5-L",
            kernel="rwm",
            target="tempered",
            beta=0.5,
            steps=2,
            blocks=(L,),
            adapt=True,
            target_accept=0.4,
        ),
    ]


def sampler_names(num_layers: int) -> list[str]:
    """Every name :func:`sampler_by_name` accepts (``default`` first)."""
    return [DEFAULT_SAMPLER, *(s.name for s in default_samplers(num_layers))]


def sampler_by_name(name: str, num_layers: int, own: SamplerConfig | None = None) -> SamplerConfig:
    """The sampler called ``name`` for a model whose flow has ``num_layers`` layers.

    Arguments:
        name: ``default`` (``own``, the checkpoint's sampler) or a name of
            :func:`default_samplers`.
        num_layers: the model's flow layers (``model.flow.num_layers``).
        own: the checkpoint's own sampler (``Checkpoint.sampler``); ``default`` without it is
            the GRU-SNF default.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a temperature
            that is not a positive number.
    """
    tempered = re.fullmatch(r"(.+)-t([0-9]*\.?[0-9]+)", name)
    if tempered is not None:
        base = sampler_by_name(tempered.group(1), num_layers, own)
        t = float(tempered.group(2))
        if t <= 0:
            raise ValueError(f"sampler {name!r}: the temperature after -t must be > 0")
        # default-t0.8 of a checkpoint carrying gru-snf-t0.8 is that sampler itself
        return base.tempered(t)
    if name == DEFAULT_SAMPLER:
        return own if own is not None else SNF_DEFAULT
    for s in default_samplers(num_layers):
        if s.name == name:
            return s
    raise ValueError(
        f"unknown sampler {name!r}; choose from {', '.join(sampler_names(num_layers))} "
        "(any of them may end in -t<temperature>, e.g. gru-snf-t0.8)"
    )


__all__ = ["DEFAULT_SAMPLER", "default_samplers", "sampler_by_name", "sampler_names"]
