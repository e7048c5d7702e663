"""Cold start, "learn this scene": a camera without a trained model learns normal motion from
its own first footage, trains a forecaster and the posture flows the default scorer needs in
the background, calibrates an alert threshold on held-out footage of the same camera, then
starts scoring.

Phases per camera: ``learning`` (tracked poses are collected, nothing is scored) ->
``training`` (a child process trains while detection goes on) -> ``scoring``. A camera
whose training fails goes to ``failed`` with the reason (detection keeps running; no alerts).

The scene model and its posture flows train in a child process of their own
(:mod:`pipelines.scene_training`: its own heap policy; a training that dies or hangs fails
only its camera, with the reason; a graceful stop ends it without failing the camera).

The footage is split in time: the first ``1 - holdout`` share trains, the rest validates
(early stopping) and calibrates the threshold for the operator's false-alert target. With a
few minutes of footage the threshold is extrapolated from the score tail (see
:func:`forecasting.calibration.calibrate_threshold`); a longer learning period gives a
better-founded threshold. A learned model is saved (``<save_dir>/<camera>.pt``) and reused
on the next start instead of learning again.

Example:
    >>> learner = SceneLearner("lobby", LearnSettings(seconds=120))  # doctest: +SKIP
    >>> for pf in pose_frames:  # doctest: +SKIP
    ...     learner.add(pf)
    ...     if (m := learner.poll()) is not None:
    ...         scorer = TrackScorer(m.checkpoint, ...)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from detector.datasets import Clip
from detector.pose import MAX_FPS, MIN_FPS, PoseFrame, tracks_from_frames
from forecasting.calibration import Calibration
from forecasting.checkpoint import Checkpoint, load_checkpoint, update_checkpoint
from forecasting.defaults import (
    ALERT_MIN_DURATION_S,
    AUTO,
    COLD_START_POSTURE_EPOCHS,
    COLD_START_SPEED_CONDITIONED,
    DEFAULT_SAMPLER,
)
from forecasting.frame_scores import smooth
from forecasting.posture import PostureConfig
from forecasting.scoring import ScorerConfig, posture_of
from forecasting.torch_model import ModelConfig
from forecasting.train import TrainConfig, build_windows
from forecasting.windows import WindowConfig, Windows
from pipelines.clip_scoring import calibrate_on_clips, score_split
from pipelines.feedback import apply_feedback
from pipelines.model_provider import ServedModel, served_model
from pipelines.scene_training import SceneJob, TrainingStoppedError, run_scene_job
from pipelines.serving import (
    RuntimeConfigError,
    ServingSpec,
    calibration_record,
    configured_scorer,
    scorer_config,
)
from pipelines.tracks import clip_tracks

if TYPE_CHECKING:
    from pipelines.config import PosewatchConfig

log = logging.getLogger(__name__)

PHASES = ("learning", "training", "scoring", "failed")


@dataclass(frozen=True, slots=True)
class LearnSettings:
    """How a camera learns its scene (see ``pipelines.config.LearnConfig``)."""

    seconds: float = 120.0
    holdout: float = 0.25
    epochs: int = 15
    max_train_minutes: float = 10.0
    members: int = 3
    posture_flows: int = 4
    posture_epochs: int = COLD_START_POSTURE_EPOCHS
    hidden: int = 128
    flow_layers: int = 4
    seed: int = 0
    save_dir: Path | None = None
    target_per_hour: float = 1.0
    min_duration_s: float = ALERT_MIN_DURATION_S
    sigma: float = 6.0
    scorer: str = AUTO
    sampler: str = DEFAULT_SAMPLER
    samples: int = 20
    stride: int = 3
    batch: int = 256
    store: Path | None = None  # alert store whose verdicts refine the threshold

    @classmethod
    def from_config(cls, cfg: PosewatchConfig) -> LearnSettings:
        """The settings of ``cfg``: ``cold_start`` fields by name, scoring from
        ``forecaster``, the calibration target and minimum duration from ``alerting``."""
        own = {f.name for f in fields(cls)}
        cs = cfg.cold_start.model_dump()
        fc = cfg.forecaster.model_dump()
        values = {k: v for k, v in {**fc, **cs}.items() if k in own}
        return cls(
            **values,
            seconds=cfg.cold_start.learn_minutes * 60,
            target_per_hour=cfg.cold_start.target_false_alerts_per_hour
            or cfg.alerting.target_false_alerts_per_hour,
            min_duration_s=cfg.alerting.min_duration_s,
            sigma=cfg.forecaster.smoothing_sigma,
            store=cfg.outputs.store,
        )


@dataclass(slots=True)
class LearnedModel:
    """What learning produced: the model and its calibrated threshold."""

    checkpoint: Checkpoint
    threshold: float
    path: Path | None
    seconds: float  # training + calibration wall time
    info: dict[str, float] = field(default_factory=dict)


class SceneLearner:
    """Collects one camera's poses, then trains (in a child process, waited on by a
    background thread) and calibrates.

    Arguments:
        camera: camera name.
        settings: learning settings.
        scorer_for: the scorer configuration the learned model will be served with (its
            threshold is calibrated with exactly that); default: ``settings``' scorer,
            sampler and K.
    """

    def __init__(
        self,
        camera: str,
        settings: LearnSettings,
        scorer_for: Callable[[Checkpoint], ScorerConfig] | None = None,
    ):
        self.camera = camera
        self.s = settings
        self._scorer_for = scorer_for or (
            lambda ck: scorer_config(
                ck, settings.scorer, settings.sampler, settings.samples, settings.batch
            )
        )
        self.phase = "learning"
        self.error: str | None = None
        self._frames: list[PoseFrame] = []
        self._fps = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._result: LearnedModel | None = None
        self._handed_over = False
        saved = self.saved_path
        if saved is not None and saved.exists():
            try:
                ck = load_checkpoint(saved)
                thr = ck.calibration.get("threshold")
                fitted = ServingSpec.from_calibration(ck.calibration)
                serving = ServingSpec.of(ck, self._scorer_for(ck))
                diff = fitted.differences(serving) if fitted is not None else ["unknown"]
                posture = posture_of(ck.model)
                if posture is not None and posture.cfg.speed_conditioned != COLD_START_SPEED_CONDITIONED:  # fmt: skip
                    # saved before session 28: a motion part per speed (3.7 points of AUC
                    # at 10 minutes of footage, docs/DECISIONS.md)
                    diff = [*diff, "its fused score's motion statistics are fitted per speed"]
                if diff:
                    log.warning(
                        "%s: %s was calibrated for another configuration (%s); learning again",
                        camera,
                        saved,
                        "; ".join(diff),
                    )
                elif thr is not None:
                    self._result = LearnedModel(ck, float(thr), saved, 0.0)
                    self.phase = "training"  # handed over at the first poll
                    log.info("%s: reusing the scene model learned before (%s)", camera, saved)
            except (ValueError, OSError, KeyError) as exc:
                log.warning("%s: cannot reuse %s (%s); learning again", camera, saved, exc)

    @property
    def saved_path(self) -> Path | None:
        return None if self.s.save_dir is None else Path(self.s.save_dir) / f"{self.camera}.pt"

    def collected_seconds(self) -> float:
        if len(self._frames) < 2:
            return 0.0
        return self._frames[-1].timestamp - self._frames[0].timestamp

    def add(self, pf: PoseFrame, fps: float | None = None) -> None:
        """Add a tracked frame while learning; starts training once enough is collected.
        ``fps``: the camera's frame rate (default: the one the frame states)."""
        if self.phase != "learning":
            return
        fps = fps or pf.fps
        if fps:
            self._fps = fps
        self._frames.append(pf)
        if self.collected_seconds() >= self.s.seconds:
            self.start_training()

    def input_ended(self) -> None:
        """The camera's source finished while learning: train on what was collected."""
        if self.phase == "learning":
            self.start_training()

    def start_training(self) -> None:
        if self.phase != "learning":
            return
        self.phase = "training"
        frames, self._frames = self._frames, []
        log.info(
            "%s: learned %.0f s of footage (%d frames); training in the background",
            self.camera,
            frames[-1].timestamp - frames[0].timestamp if len(frames) > 1 else 0.0,
            len(frames),
        )
        self._thread = threading.Thread(
            target=self._train, args=(frames,), name=f"learn-{self.camera}", daemon=True
        )
        self._thread.start()

    def poll(self) -> LearnedModel | None:
        """The learned model, once (the first call after training finished), else None."""
        if self._handed_over or self._result is None:
            return None
        self._handed_over = True
        self.phase = "scoring"
        return self._result

    def fail(self, error: str) -> None:
        """Mark learning failed (detection goes on, the camera does not alert)."""
        self.error = error
        self.phase = "failed"
        log.error("%s", error)

    def close(self) -> None:
        """Stop training (a graceful stop of the service): the child is killed, the phase
        stays ``training`` (not ``failed``)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for background training; True when it is no longer running."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _fps_of(self, frames: list[PoseFrame]) -> float:
        if self._fps > 0:
            return min(max(self._fps, MIN_FPS), MAX_FPS)  # a rate its checkpoint can record
        if len(frames) > 1 and frames[-1].timestamp > frames[0].timestamp:
            fps = (len(frames) - 1) / (frames[-1].timestamp - frames[0].timestamp)
            return min(max(fps, MIN_FPS), MAX_FPS)
        return 10.0

    def _train(self, frames: list[PoseFrame]) -> None:
        t0 = time.perf_counter()
        try:
            self._result = self._learn(frames, t0)
            log.info(
                "%s: scene model ready in %.0f s (threshold %.3f); scoring starts",
                self.camera,
                self._result.seconds,
                self._result.threshold,
            )
        except TrainingStoppedError:
            log.info("%s: training stopped with the service", self.camera)
        except Exception as exc:
            self.fail(f"learning the scene of camera {self.camera!r} failed: {exc}")

    def _learn(self, frames: list[PoseFrame], t0: float) -> LearnedModel:
        """Split the footage, train (in a child process), calibrate; ``t0``:
        ``perf_counter`` when learning began. The model is written in a private directory
        (in ``save_dir`` when set) and moved into place once calibrated."""
        fps = self._fps_of(frames)
        train_clip, hold_clip, cut = self._split(frames)
        wcfg = WindowConfig()
        tcfg, tr, va = self._windows(train_clip, hold_clip, wcfg, len(frames))
        s = self.s
        path = self.saved_path
        # The cap binds the members and the flows after the first; the first flow and a
        # slow machine's epoch ends may overrun it, a hung child may not.
        timeout = 2 * s.max_train_minutes * 60 + 600
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_work(path.parent, timeout)
        work = Path(tempfile.mkdtemp(prefix=".learn-", dir=None if path is None else path.parent))
        try:
            job = SceneJob(
                path=work / f"{self.camera}.pt",
                train=tr,
                val=va,
                model=ModelConfig(hidden=s.hidden, flow_layers=s.flow_layers),
                train_cfg=tcfg,
                windows=wcfg,
                posture=PostureConfig(
                    flows=s.posture_flows,
                    epochs=s.posture_epochs,
                    speed_conditioned=COLD_START_SPEED_CONDITIONED,
                )
                if s.posture_flows > 0
                else None,
                deadline=time.monotonic() + s.max_train_minutes * 60 - (time.perf_counter() - t0),
                extra={"learned_scene": self.camera, "training_frames": cut, "fps": fps},
                threads=torch.get_num_threads(),
            )
            info = run_scene_job(job, f"learn-{self.camera}", timeout, self._stop)
            n_train = len(tr)
            del job, tr, va  # the child's copies are gone; ours need not wait for calibration
            threshold, n_win = self._calibrate(work / f"{self.camera}.pt", hold_clip, fps)
            final = path if path is not None else work / f"{self.camera}.pt"
            if path is not None:
                os.replace(work / f"{self.camera}.pt", path)
            learned = load_checkpoint(final)
        finally:
            # Unsaved, the model lives only in memory once loaded: its file goes too.
            shutil.rmtree(work, ignore_errors=True)
        info.update(train_windows=float(n_train), holdout_windows=float(n_win))
        info["members"] = float(s.members)
        elapsed = time.perf_counter() - t0
        return LearnedModel(learned, threshold, path, elapsed, info)

    def _cut(self, n: int) -> int:
        """How many of ``n`` frames train (the rest is held out)."""
        return round(n * (1.0 - self.s.holdout))

    def _split(self, frames: list[PoseFrame]) -> tuple[Clip, Clip, int]:
        """The footage split in time: the first ``1 - holdout`` share trains, the rest is
        held out; each part's frame indices re-based to 0 (a clip's frames start at 0).

        Returns:
            The training clip, the held-out clip and how many frames train.
        """
        n = len(frames)
        cut = self._cut(n)
        first = frames[0].frame_index
        cut_frame = frames[cut].frame_index if cut < n else frames[-1].frame_index + 1
        train_clip, hold_clip = (
            Clip(
                f"{self.camera}-{name}",
                Path(self.camera),
                tracks_from_frames(
                    [
                        PoseFrame(
                            f.camera, f.frame_index - base, f.timestamp, f.image_size, f.persons
                        )
                        for f in sel
                    ]
                ),
                None,
            )
            for name, sel, base in (
                ("train", frames[:cut], first),
                ("holdout", frames[cut:], cut_frame),
            )
        )
        return train_clip, hold_clip, cut

    def _windows(
        self, train_clip: Clip, hold_clip: Clip, wcfg: WindowConfig, n_frames: int
    ) -> tuple[TrainConfig, Windows, Windows]:
        """The training settings and the training / held-out windows.

        Raises:
            ValueError: too few training windows (people tracked too briefly).
        """
        s = self.s
        # Members share the cap: each stops after its share of it.
        per_member = s.max_train_minutes / s.members
        tcfg = TrainConfig(s.epochs, seed=s.seed, normal_only=False, max_minutes=per_member, device="cpu", patience=4, members=s.members)  # fmt: skip
        tr = build_windows(clip_tracks([train_clip]), wcfg, tcfg.stride, normal_only=False)
        va = build_windows(clip_tracks([hold_clip]), wcfg, tcfg.stride, normal_only=False)
        if len(tr) < 32:
            raise ValueError(
                f"only {len(tr)} training windows in {n_frames} frames: too few people were "
                f"tracked long enough ({wcfg.length} frames); learn for longer (cold_start.learn_minutes)"
            )
        return tcfg, tr, va

    def _calibrate(self, path: Path, hold_clip: Clip, fps: float) -> tuple[float, int]:
        """Calibrate the alert threshold of the checkpoint at ``path`` on the held-out
        footage (operators' verdicts applied) and record it in the checkpoint.

        Returns:
            The threshold and the number of held-out windows scored.

        Raises:
            ValueError: no held-out windows.
        """
        s = self.s
        ck = load_checkpoint(path)
        scorer = self._scorer_for(ck)
        cs, _, n_win = score_split(ck, [hold_clip], scorer, s.stride, False, fps)
        if n_win == 0:
            raise ValueError("no held-out windows to calibrate on; learn for longer")
        min_dur = max(1, round(s.min_duration_s * fps))
        try:
            cal = calibrate_on_clips(cs, s.sigma, fps, s.target_per_hour, min_dur)
        except ValueError as exc:
            # Minutes of footage may hold too few episodes to fit the rate's tail: fall back
            # to the highest held-out score (none of the held-out footage would alert).
            top = max(float(np.nanmax(smooth(c.frames, s.sigma, True))) for c in cs)
            log.warning("%s: %s; threshold = highest held-out score %.3f", self.camera, exc, top)
            hours = sum(len(c.frames) for c in cs) / fps / 3600
            cal = Calibration(top, s.target_per_hour, "holdout-max", fps, min_dur, hours)
        cal, verdicts = self._feedback(cal, ck, scorer)
        record = {**cal.to_dict(), **calibration_record(ck, scorer), "sigma_causal": s.sigma}
        update_checkpoint(path, calibration={**record, "stride": s.stride, **verdicts})
        return cal.threshold, n_win

    def _feedback(
        self, cal: Calibration, ck: Checkpoint, scorer: ScorerConfig
    ) -> tuple[Calibration, dict[str, float | int | str]]:
        """The calibration after the operators' verdicts on this camera's alerts (the alert
        store, :mod:`pipelines.feedback`), and what they did."""
        s = self.s
        fb = apply_feedback(cal.threshold, ck, scorer, s.store, self.camera, s.sigma, s.stride)
        return replace(cal, threshold=fb.threshold), fb.record()


class ColdStartProvider:
    """Each camera learns its scene, then serves its own model (cold start).

    Arguments:
        cfg: configuration (``cold_start``, ``forecaster``, ``alerting``).
        cameras: the cameras to learn.
    """

    def __init__(self, cfg: PosewatchConfig, cameras: Iterable[str]):
        self.cfg = cfg
        settings = LearnSettings.from_config(cfg)

        def scorer_for(ckpt: Checkpoint) -> ScorerConfig:
            return configured_scorer(ckpt, cfg.forecaster)

        self.learners = {n: SceneLearner(n, settings, scorer_for) for n in cameras}
        self.models: dict[str, ServedModel] = {}
        log.info(
            "no forecaster.checkpoint: each camera learns its scene from %.1f min of footage "
            "first (cold start)",
            cfg.cold_start.learn_minutes,
        )

    def model_for(self, camera: str) -> ServedModel | None:
        return self.models.get(camera)

    def phase(self, camera: str) -> str:
        learner = self.learners.get(camera)
        return learner.phase if learner is not None else "failed"

    def observe(self, frame: PoseFrame, fps: float | None = None) -> None:
        learner = self.learners.get(frame.camera)
        if learner is not None:
            learner.add(frame, fps)

    def input_ended(self, camera: str) -> None:
        learner = self.learners.get(camera)
        if learner is not None:
            learner.input_ended()

    def close(self) -> None:
        """Stop every camera's training (a graceful stop) and wait for it."""
        for learner in self.learners.values():
            learner.close()
        for learner in self.learners.values():
            learner.wait(15.0)

    def poll(self) -> dict[str, ServedModel]:
        ready: dict[str, ServedModel] = {}
        for n, learner in self.learners.items():
            learned = learner.poll()
            if learned is None:
                continue
            try:
                ready[n] = self.models[n] = served_model(learned.checkpoint, self.cfg, camera=n)
            except RuntimeConfigError as exc:
                learner.fail(f"the learned model of camera {n!r} cannot be served: {exc}")
        return ready


def _remove_stale_work(folder: Path, age: float) -> None:
    """Remove the private training directories (``.learn-*``) in ``folder`` older than
    ``age`` seconds: left by a service that was killed while a camera trained."""
    now = time.time()
    for d in folder.glob(".learn-*"):
        try:
            if d.is_dir() and now - d.stat().st_mtime > age:
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed %s, left by a training that was killed", d)
        except OSError:
            continue


__all__ = ["PHASES", "ColdStartProvider", "LearnSettings", "LearnedModel", "SceneLearner"]
