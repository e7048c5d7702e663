"""The scorer configuration a checkpoint is served with, built in one place, and the check that
a calibrated threshold was fitted for exactly that configuration.

Thresholds of different scorers, samplers, numbers of futures (K) or models are not
comparable: a threshold calibrated with the GRU-SNF sampler at K = 42 means nothing for
GRU-NF at K = 20. Every path that scores live (``posewatch run``, ``posewatch score``, cold
start's own calibration) builds its :class:`~forecasting.scoring.ScorerConfig` with
:func:`scorer_config`, and every calibration stores the :class:`ServingSpec` it was fitted
for; :func:`resolve_threshold` refuses a threshold whose spec differs, naming both.

Example:
    >>> a = ServingSpec("minhde", "gru-snf", 42, "0123abcd4567")
    >>> b = ServingSpec("minhde", "gru-nf", 20, "0123abcd4567")
    >>> a.differences(b)
    ['sampler gru-snf != gru-nf', 'K 42 != 20']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from forecasting.checkpoint import Checkpoint
from forecasting.samplers import sampler_by_name
from forecasting.scoring import POSTURE_SCORERS, ScorerConfig, resolve_scorer
from pipelines.config import ForecasterConfig, PosewatchConfig


class RuntimeConfigError(ValueError):
    """The configuration cannot run (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class ServingSpec:
    """What a threshold depends on.

    Attributes:
        scorer: scorer name (``minhde``, ``fused``, ...; never ``auto``).
        sampler: sampler name (``gru-nf``, ``gru-snf``, ...; never ``default``).
        samples: K, futures drawn per person window.
        model: the model's weight hash (:meth:`forecasting.checkpoint.Checkpoint.model_id`);
            empty when unknown (calibrations written before it was stored).
    """

    scorer: str
    sampler: str = ""
    samples: int = 0
    model: str = ""

    def describe(self) -> str:
        """``scorer minhde, sampler gru-snf, K 42, model 0123abcd4567``."""
        return (
            f"scorer {self.scorer}, sampler {self.sampler or 'unknown'}, "
            f"K {self.samples or 'unknown'}, model {self.model or 'unknown'}"
        )

    def differences(self, other: ServingSpec) -> list[str]:
        """What differs from ``other``; a field one side does not know (empty, 0) matches
        any (calibrations written before the field was stored)."""
        out = []
        if self.scorer != other.scorer:
            out.append(f"scorer {self.scorer} != {other.scorer}")
        if self.sampler and other.sampler and self.sampler != other.sampler:
            out.append(f"sampler {self.sampler} != {other.sampler}")
        if self.samples and other.samples and self.samples != other.samples:
            out.append(f"K {self.samples} != {other.samples}")
        if self.model and other.model and self.model != other.model:
            out.append(f"model {self.model} != {other.model}")
        return out

    @classmethod
    def of(cls, ckpt: Checkpoint, cfg: ScorerConfig) -> ServingSpec:
        """The spec of serving ``ckpt`` with ``cfg``."""
        return cls(
            cfg.name,
            cfg.sampler.name,
            cfg.num_samples,
            ckpt.model_id(posture=cfg.name in POSTURE_SCORERS),
        )

    @classmethod
    def from_calibration(cls, cal: dict[str, Any]) -> ServingSpec | None:
        """The spec a stored calibration was fitted for (None when it does not say)."""
        scorer = cal.get("scorer")
        if not isinstance(scorer, dict) or "name" not in scorer:
            return None
        sampler = scorer.get("sampler") or {}
        return cls(
            str(scorer["name"]),
            str(sampler.get("name") or ""),
            int(scorer.get("num_samples") or 0),
            str(cal.get("model") or ""),
        )


def scorer_config(
    ckpt: Checkpoint,
    scorer: str,
    sampler: str,
    samples: int,
    batch: int = 256,
) -> ScorerConfig:
    """THE scorer configuration of serving ``ckpt`` (every live path and cold start's
    calibration call this).

    Raises:
        ValueError: an unknown scorer or sampler name, or a posture scorer for a checkpoint
            without posture flows.
    """
    return ScorerConfig(
        name=resolve_scorer(scorer, ckpt.model),
        num_samples=samples,
        sampler=sampler_by_name(sampler, ckpt.model.flow.num_layers, ckpt.sampler),
        batch=batch,
    )


def configured_scorer(ckpt: Checkpoint, cfg: ForecasterConfig) -> ScorerConfig:
    """:func:`scorer_config` from the service's ``forecaster`` section."""
    return scorer_config(ckpt, cfg.scorer, cfg.sampler, cfg.samples, cfg.batch)


def calibration_record(ckpt: Checkpoint, cfg: ScorerConfig) -> dict[str, Any]:
    """The keys a calibration stores besides the threshold: the scorer configuration and
    the model id it was fitted for."""
    return {"scorer": cfg.to_dict(), "model": ServingSpec.of(ckpt, cfg).model}


def resolve_threshold(cfg: PosewatchConfig, ckpt: Checkpoint) -> float:
    """The alert threshold of serving ``ckpt`` under ``cfg``: ``alerting.threshold`` when
    set, else the checkpoint's calibration, which must have been fitted for exactly the
    configuration served (:class:`ServingSpec`).

    Raises:
        RuntimeConfigError: no threshold, or one calibrated for another configuration (the
            message names both and how to fix it).
    """
    return threshold_for(ckpt, configured_scorer(ckpt, cfg.forecaster), cfg.alerting.threshold)


def threshold_for(ckpt: Checkpoint, cfg: ScorerConfig, configured: float | None) -> float:
    """:func:`resolve_threshold` for a scorer configuration already built."""
    if configured is not None:
        return float(configured)
    thr = ckpt.calibration.get("threshold")
    if thr is None:
        raise RuntimeConfigError(
            "no alert threshold: set alerting.threshold or calibrate the checkpoint "
            "(`posewatch calibrate`)"
        )
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise RuntimeConfigError(
            f"the checkpoint's calibrated threshold is {str(thr)[:40]!r}, not a finite number "
            "(it would never alert): recalibrate it (`posewatch calibrate`) or set "
            "alerting.threshold"
        )
    serving = ServingSpec.of(ckpt, cfg)
    fitted = ServingSpec.from_calibration(ckpt.calibration)
    if fitted is None:
        return float(thr)  # a calibration older than the stored configuration
    diff = fitted.differences(serving)
    if diff:
        what = (
            f"the {fitted.scorer} scorer, not {serving.scorer}"
            if fitted.scorer != serving.scorer
            else "another configuration"
        )
        raise RuntimeConfigError(
            f"the checkpoint's threshold was calibrated for {what}: calibrated for "
            f"({fitted.describe()}), served with ({serving.describe()}); "
            f"{'; '.join(diff)}. Recalibrate "
            f"for what is served (`posewatch calibrate --scorer {serving.scorer} --sampler "
            f"{serving.sampler} -k {serving.samples}`), set forecaster.scorer / sampler / "
            f"samples to {fitted.scorer} / {fitted.sampler} / {fitted.samples}, or set "
            "alerting.threshold"
        )
    return float(thr)


__all__ = [
    "RuntimeConfigError",
    "ServingSpec",
    "calibration_record",
    "configured_scorer",
    "resolve_threshold",
    "scorer_config",
    "threshold_for",
]
