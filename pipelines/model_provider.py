"""Model providers: which model scores each camera, with which scorer configuration and
threshold.

- :class:`CheckpointProvider`: one trained checkpoint (``forecaster.checkpoint``) serves
  every camera; its threshold is checked against the configuration served at start.
- :class:`~pipelines.learning.ColdStartProvider`: no checkpoint; each camera learns its own
  scene (:class:`~pipelines.learning.SceneLearner`), calibrated with the very scorer
  configuration it is then served with.

Both build what they serve with :func:`served_model`, the one place a
:class:`~pipelines.track_scoring.TrackScorer`, its :class:`ServingSpec`, threshold and the
alerts' :class:`~pipelines.alerts.ModelInfo` come from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from detector.pose import PoseFrame
from forecasting.calibration import caveat
from forecasting.checkpoint import Checkpoint, load_checkpoint
from forecasting.scoring import ScorerConfig, early_stop_bound
from pipelines.alerts import ModelInfo
from pipelines.config import PosewatchConfig
from pipelines.serving import (
    RuntimeConfigError,
    ServingSpec,
    configured_scorer,
    threshold_for,
)
from pipelines.track_scoring import TrackScorer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ServedModel:
    """A model as served: its scorer (track buffers included), threshold and identity.

    Attributes:
        checkpoint: the forecaster.
        scorer_config: how windows are scored as calibrated (the scorer serves it with the
            live settings: early stop, exact path; seeds per frame from the score stage).
        spec: scorer, sampler, K and model id (what the threshold was checked against).
        threshold: alert threshold (score units of ``spec.scorer``).
        info: model name and version stamped on alerts.
        scorer: the track buffers and batched scoring of every camera it serves.
    """

    checkpoint: Checkpoint
    scorer_config: ScorerConfig
    spec: ServingSpec
    threshold: float
    info: ModelInfo
    scorer: TrackScorer


def served_model(
    ckpt: Checkpoint,
    cfg: PosewatchConfig,
    threshold: float | None = None,
    camera: str | None = None,
) -> ServedModel:
    """Serve ``ckpt`` as ``cfg`` says (``forecaster`` section; ``alerting.threshold`` or the
    checkpoint's calibration, or ``threshold`` when given). A calibrated threshold that was
    not fitted (:func:`forecasting.calibration.caveat`) is logged as a warning, led by
    ``camera`` (a scene model's camera) or the model's id.

    Raises:
        RuntimeConfigError: no threshold, a threshold calibrated for another configuration,
            or a scorer / sampler the checkpoint cannot serve.
    """
    try:
        sc = configured_scorer(ckpt, cfg.forecaster)
    except ValueError as exc:
        raise RuntimeConfigError(str(exc)) from exc
    given = threshold if threshold is not None else cfg.alerting.threshold
    thr = threshold_for(ckpt, sc, given)
    spec = ServingSpec.of(ckpt, sc)
    if given is None and (note := caveat(ckpt.calibration)):
        log.warning("%s: %s", camera or f"model {spec.model}", note)
    info = ModelInfo(
        name=f"gru-nf/{spec.sampler}/{spec.scorer}",
        version=str(ckpt.meta.get("code_version")),
        id=spec.model,
    )
    f = cfg.forecaster
    margin = None if f.exact else f.early_stop_margin
    stop = None if margin is None else early_stop_bound(sc.name, thr, margin)
    live = replace(sc, exact=f.exact, stop_below=stop)
    track_scorer = TrackScorer(ckpt, live, f.stride, f.smoothing_sigma)
    return ServedModel(ckpt, sc, spec, thr, info, track_scorer)


class ModelProvider(Protocol):
    """What the score stage asks about models."""

    def model_for(self, camera: str) -> ServedModel | None:
        """The camera's model, or None while it has none yet (learning, training, failed)."""

    def phase(self, camera: str) -> str:
        """``learning``, ``training``, ``scoring`` or ``failed``."""

    def observe(self, frame: PoseFrame, fps: float | None = None) -> None:
        """A tracked frame of a camera without a model (a learner collects it)."""

    def input_ended(self, camera: str) -> None:
        """The camera's source ended (a learner trains on what it has)."""

    def poll(self) -> dict[str, ServedModel]:
        """Cameras whose model became ready since the last call."""

    def close(self) -> None:
        """A graceful stop: background work (a learner's training) ends."""


class CheckpointProvider:
    """One checkpoint serves every camera (one shared :class:`TrackScorer`).

    Raises:
        RuntimeConfigError: see :func:`served_model`; a checkpoint that cannot be read.
    """

    def __init__(self, cfg: PosewatchConfig, warmup: bool = True):
        path = cfg.forecaster.checkpoint
        if path is None:
            raise RuntimeConfigError("forecaster.checkpoint is not set")
        try:
            ckpt = load_checkpoint(path)
        except (ValueError, OSError) as exc:
            raise RuntimeConfigError(f"forecaster.checkpoint: {exc}") from exc
        self.model = served_model(ckpt, cfg)
        log.info(
            "serving %s (%s) with threshold %.4f",
            path,
            self.model.spec.describe(),
            self.model.threshold,
        )
        if warmup:
            self.model.scorer.warmup()

    def model_for(self, camera: str) -> ServedModel | None:
        return self.model

    def phase(self, camera: str) -> str:
        return "scoring"

    def observe(self, frame: PoseFrame, fps: float | None = None) -> None:
        return None

    def input_ended(self, camera: str) -> None:
        return None

    def poll(self) -> dict[str, ServedModel]:
        return {}

    def close(self) -> None:
        return None


def make_provider(cfg: PosewatchConfig, cameras: Iterable[str]) -> ModelProvider:
    """A :class:`CheckpointProvider` when ``forecaster.checkpoint`` is set, else cold start
    (:class:`pipelines.learning.ColdStartProvider`; imported only then: serving a checkpoint
    never loads the trainer)."""
    if cfg.forecaster.checkpoint is not None:
        return CheckpointProvider(cfg)
    from pipelines.learning import ColdStartProvider

    return ColdStartProvider(cfg, cameras)


__all__ = [
    "CheckpointProvider",
    "ModelProvider",
    "ServedModel",
    "make_provider",
    "served_model",
]
