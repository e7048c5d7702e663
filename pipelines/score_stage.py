"""The score stage: tracked poses in, per-person scores and alert events out.

Per camera: the model its provider serves (:mod:`pipelines.model_provider`), the track
buffers and smoothing of that model's :class:`~pipelines.track_scoring.TrackScorer`, and
an :class:`~pipelines.alerts.AlertLifecycle` with the model's threshold; a track unseen for
more than ``max_missing`` frames is forgotten and its open episode ended (``lost``). Cameras
without a model yet hand their frames to the provider (cold start learns from them).

Seeding (``forecaster.seeding``): with ``frame`` (default) each camera frame's persons are
scored in one model call seeded from ``(camera, frame index)`` (:func:`frame_seed`), so the
same poses give the same scores and alert ids in ``posewatch run``, in any ``posewatch
score`` member and after a replay; with ``batch`` the frames of every camera in a batch
share one model call and one seed (throughput first).

A camera whose frame index goes back by more than a window (its producer, ``posewatch
detect``, restarted and counts from 0 again; track ids start over too) is restarted: its
open episodes end (``end`` alerts), its buffers and episodes are dropped and counted in
:attr:`ScoreStage.camera_restarts`. A smaller step back only restarts the persons it
concerns (:class:`~pipelines.track_scoring.TrackScorer`). A frame index jumping forward by
more than :data:`JUMP_FRAMES` is skipped (counted in :attr:`ScoreStage.frames_held`) unless
the next frame continues from it: one stray index cannot end a camera's episodes.

No Kafka, no YOLO, no clock: a plain class fed with :class:`~detector.pose.PoseFrame` s.

Example:
    >>> stage = ScoreStage(provider, cfg.alerting)  # doctest: +SKIP
    >>> for out in stage.process(pose_frames):  # doctest: +SKIP
    ...     for alert in out.alerts:
    ...         print(alert.type, alert.alert_id)
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from detector.pose import PoseFrame
from forecasting.windows import rate_ratio
from pipelines.alerts import Alert, AlertLifecycle
from pipelines.config import AlertingConfig
from pipelines.model_provider import ModelProvider, ServedModel
from pipelines.track_scoring import PersonScore

log = logging.getLogger(__name__)

Seeding = Literal["frame", "batch"]

#: A camera's frame index moving forward by more than this is a jump: the frame is skipped
#: unless the next one continues from it (a stray index must not restart the camera).
JUMP_FRAMES = 600


def segments(frames: Sequence[PoseFrame]) -> list[slice]:
    """Runs of frames in which no camera's frame index fails to increase: a step back (a
    repeat, a restart) starts a new run, so it is handled between two model calls.

    >>> f = [PoseFrame("a", i, 0.0, (10, 10), []) for i in (1, 2, 2, 3, 0)]
    >>> segments(f)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    out, start = [], 0
    last: dict[str, int] = {}
    for i, pf in enumerate(frames):
        if pf.frame_index <= last.get(pf.camera, -1) and i > start:
            out.append(slice(start, i))
            start, last = i, {}
        last[pf.camera] = pf.frame_index
    if start < len(frames):
        out.append(slice(start, len(frames)))
    return out


def frame_seed(camera: str, frame_index: int) -> int:
    """The sampling seed of one camera frame (the same in every process).

    >>> frame_seed("gate", 12) == frame_seed("gate", 12) != frame_seed("gate", 13)
    True
    """
    return zlib.crc32(f"{camera}/{frame_index}".encode())


@dataclass(slots=True)
class ScoredFrame:
    """One camera frame after scoring.

    Attributes:
        poses: the tracked frame.
        scores: persons scored at this frame (smoothed scores included).
        alerts: alert events it caused (``new`` / ``update`` / ``end``, lost tracks too).
        lost: track ids forgotten at this frame (unseen for more than ``max_missing`` frames).
        threshold: the camera's alert threshold; None while it has no model.
        alerting: track ids with an open episode after this frame.
    """

    poses: PoseFrame
    scores: list[PersonScore] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    threshold: float | None = None
    alerting: set[int] = field(default_factory=set)


@dataclass(slots=True)
class StageTiming:
    """Seconds spent by the last :meth:`ScoreStage.process` call."""

    forecast_s: float = 0.0  # drawing futures
    score_s: float = 0.0  # everything else (buffers, scorers, smoothing, lifecycles)


class ScoreStage:
    """Scores tracked poses and runs each camera's alert lifecycle.

    Arguments:
        provider: which model serves each camera.
        alerting: episode settings (minimum duration, hysteresis, update interval, ...).
        seeding: ``frame`` or ``batch`` (see the module docstring).
    """

    def __init__(
        self, provider: ModelProvider, alerting: AlertingConfig, seeding: Seeding = "frame"
    ):
        self.provider = provider
        self.alerting = alerting
        self.seeding: Seeding = seeding
        self.lifecycles: dict[str, AlertLifecycle] = {}
        self.timing = StageTiming()
        self._last_frame: dict[str, int] = {}  # camera -> last frame index scored
        self._held: dict[str, int] = {}  # camera -> a far jump forward awaiting a second frame
        self.camera_restarts = 0
        self.frames_held = 0  # frames skipped: a lone jump far forward

    def _lifecycle(self, camera: str, model: ServedModel) -> AlertLifecycle:
        life = self.lifecycles.get(camera)
        if life is None:
            a = self.alerting
            life = self.lifecycles[camera] = AlertLifecycle(
                camera,
                model.threshold,
                a.min_duration_s,
                a.hysteresis,
                a.update_interval_s,
                a.cooldown_s,
                a.top_joints,
                model.info,
            )
        return life

    def phase(self, camera: str) -> str:
        return self.provider.phase(camera)

    def _score(
        self, frames: Sequence[tuple[PoseFrame, ServedModel]]
    ) -> tuple[list[PersonScore], dict[int, list[int]]]:
        """Scores of frames that have a model, one model call per scorer (with ``frame``
        seeding each frame's persons draw from that frame's seed), and the track ids
        forgotten after each frame (by ``id`` of the frame)."""
        groups: dict[int, tuple[ServedModel, list[PoseFrame]]] = {}
        for pf, model in frames:
            groups.setdefault(id(model.scorer), (model, []))[1].append(pf)
        out: list[PersonScore] = []
        lost: dict[int, list[int]] = {}
        for model, group in groups.values():
            seeds = (
                [frame_seed(pf.camera, pf.frame_index) for pf in group]
                if self.seeding == "frame"
                else None
            )
            scores, gone = model.scorer.step(group, seeds, forget=True)
            out += scores
            lost.update((id(pf), g) for pf, g in zip(group, gone, strict=True))
        return out, lost

    def process(
        self, frames: Sequence[PoseFrame], fps: Mapping[str, float] | None = None
    ) -> list[ScoredFrame]:
        """Score frames (any cameras, in order per camera); one :class:`ScoredFrame` each,
        in input order. ``fps``: cameras' frame rates, for learners.

        The frames' persons go through the model in one call. With ``frame`` seeding each
        frame's persons draw from that frame's seed and the frames are taken in order (a
        frame's lifecycle updates and lost tracks before the next frame's), so the scores
        and alerts are those of feeding one frame at a time, as ``posewatch score`` does
        with one message at a time; a frame index going back starts a new call."""
        # If scoring raises, the stage is as before the call (the track buffers restore
        # themselves): the caller may retry the frames one at a time.
        saved = (dict(self._last_frame), dict(self._held), self.frames_held)
        try:
            return self._process_all(frames, fps)
        except BaseException:
            self._last_frame, self._held, self.frames_held = saved[0], saved[1], saved[2]
            raise

    def _process_all(
        self, frames: Sequence[PoseFrame], fps: Mapping[str, float] | None
    ) -> list[ScoredFrame]:
        if self.seeding == "batch":
            return self._process(frames, fps)
        timing = StageTiming()
        out: list[ScoredFrame] = []
        for sl in segments(frames):
            out += self._process(frames[sl], fps)
            timing.forecast_s += self.timing.forecast_s
            timing.score_s += self.timing.score_s
        self.timing = timing
        return out

    def _process(
        self, frames: Sequence[PoseFrame], fps: Mapping[str, float] | None
    ) -> list[ScoredFrame]:
        t0 = time.perf_counter()
        served: list[tuple[PoseFrame, ServedModel]] = []
        restarted: dict[int, tuple[list[Alert], list[int]]] = {}
        for pf in frames:
            model = self.provider.model_for(pf.camera)
            if model is None:
                self.provider.observe(pf, (fps or {}).get(pf.camera))
                continue
            last = self._last_frame.get(pf.camera)
            if last is not None and pf.frame_index < last - self._window_back(pf, model):
                if self._held.pop(pf.camera, None) is None:  # (a held jump: not a restart)
                    restarted[id(pf)] = self._restart_camera(pf, model)
            elif last is not None and pf.frame_index > last + JUMP_FRAMES:
                held = self._held.get(pf.camera)
                if held is None or pf.frame_index < held:
                    self._held[pf.camera] = pf.frame_index  # one far jump: wait for another
                    self.frames_held += 1
                    continue
                del self._held[pf.camera]  # a second frame continues it: the stream jumped
            else:
                self._held.pop(pf.camera, None)  # the stream went on: the jump was a stray
            self._last_frame[pf.camera] = pf.frame_index
            served.append((pf, model))
        scorers = {id(m.scorer): m.scorer for _, m in served}
        fc0 = sum(sc.forecast_s for sc in scorers.values())
        by_frame: dict[tuple[str, int], list[PersonScore]] = {}
        scores, lost = self._score(served)
        for s in scores:
            by_frame.setdefault((s.camera, s.frame_index), []).append(s)
        forecast_s = sum(sc.forecast_s for sc in scorers.values()) - fc0
        models = {id(pf): m for pf, m in served}
        out = []
        for pf in frames:
            model = models.get(id(pf))
            done = (
                self._alerts(pf, model, by_frame.get((pf.camera, pf.frame_index), []), lost[id(pf)])
                if model is not None
                else ScoredFrame(pf)
            )
            ended, dropped = restarted.get(id(pf), ([], []))
            done.alerts[:0] = ended
            done.lost[:0] = [t for t in dropped if t not in done.lost]
            out.append(done)
        self.timing = StageTiming(forecast_s, time.perf_counter() - t0 - forecast_s)
        return out

    @staticmethod
    def _window_back(pf: PoseFrame, model: ServedModel) -> int:
        """A step back by more than this many of the camera's frames (a window's span at
        its rate) restarts the camera."""
        return math.ceil(model.scorer.span / rate_ratio(pf.fps, model.scorer.model_fps))

    def _restart_camera(self, pf: PoseFrame, model: ServedModel) -> tuple[list[Alert], list[int]]:
        """The camera's stream started over: end its episodes, forget its state; returns
        the ``end`` alerts and the track ids forgotten."""
        self.camera_restarts += 1
        life = self.lifecycles.pop(pf.camera, None)
        ended = life.close_all(pf.timestamp) if life is not None else []
        dropped = model.scorer.drop_camera(pf.camera)
        self._last_frame[pf.camera] = pf.frame_index
        log.warning(
            "camera %s: frame index went back to %d (its producer restarted?); its tracks and "
            "episodes start over",
            pf.camera,
            pf.frame_index,
        )
        return ended, dropped

    def _alerts(
        self, pf: PoseFrame, model: ServedModel, scores: list[PersonScore], lost: list[int]
    ) -> ScoredFrame:
        """A frame's lifecycle updates and lost tracks (forgotten after it was scored)."""
        life = self._lifecycle(pf.camera, model)
        done = ScoredFrame(pf, scores, threshold=model.threshold)
        for s in scores:
            done.alerts += life.update(
                s.track_id, s.timestamp, s.frame_index, s.smoothed, s.bbox.tolist(), s.keypoints,
                s.joints,
            )  # fmt: skip
        done.lost = list(lost)
        for tid in done.lost:
            done.alerts += life.lost(tid, pf.timestamp)
        done.alerting = {p.track_id for p in pf.persons if life.is_open(p.track_id)}
        return done

    def poll_models(self) -> list[str]:
        """Take the models that became ready (cold start); returns their cameras."""
        return list(self.provider.poll())

    def drop_camera(self, camera: str) -> None:
        """Forget a camera's buffers and episodes (its partition moved to another member)."""
        model = self.provider.model_for(camera)
        if model is not None:
            model.scorer.drop_camera(camera)
        self.lifecycles.pop(camera, None)
        self._last_frame.pop(camera, None)
        self._held.pop(camera, None)

    def close(self, ts: float) -> list[Alert]:
        """End every open episode (graceful shutdown of ``posewatch run``)."""
        return [a for life in self.lifecycles.values() for a in life.close_all(ts)]


__all__ = ["ScoreStage", "ScoredFrame", "Seeding", "StageTiming", "frame_seed", "segments"]
