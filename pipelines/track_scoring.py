"""Live scoring: per-(camera, track) pose buffers -> batched window scores -> smoothed scores.

The same functions as offline evaluation (:func:`forecasting.windows.cut_windows`,
:func:`forecasting.scoring.score_windows`, :class:`forecasting.frame_scores.CausalSmoother`)
on a sliding buffer per person: a person is scored at a frame when the buffer holds a full
window ending there (and every ``stride``-th frame after that). Persons due in a batch of
frames (any cameras) go through the model in one call.

A model's windows are frames at the rate of its training footage
(:attr:`~forecasting.checkpoint.Checkpoint.fps`); a frame that states its camera's rate
(:attr:`~detector.pose.PoseFrame.fps`) is placed on that time axis
(:func:`~forecasting.windows.model_frames`): a slower camera's frames leave gaps that the
window's gap filling interpolates, a faster camera's frames that fall on a model frame
already taken are skipped (counted in :attr:`TrackScorer.decimated`). Scores keep the
camera's own frame index. A camera whose stated rate changes (a reconnect that now states
one) starts its tracks over (counted in :attr:`TrackScorer.rate_changes`; its persons are
reported lost, so their episodes end): its old frames sit on another time axis.

Frame indices come from outside (pose messages) and are not trusted to grow: a person's
frame seen again (a duplicate) is dropped and counted (:attr:`TrackScorer.duplicates`); a
frame index behind the person's last one starts a new segment of that track (its buffer
and smoothing start over, counted in :attr:`TrackScorer.restarts`); a jump forward leaves
the skipped frames missing (a window is only scored when its frames are there).

Example:
    >>> scorer = TrackScorer(checkpoint, ScorerConfig())  # doctest: +SKIP
    >>> for frame in pose_frames:  # doctest: +SKIP
    ...     for s in scorer.add([frame]):
    ...         print(s.camera, s.track_id, s.smoothed)
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detector.pose import PoseFrame
from forecasting.checkpoint import Checkpoint
from forecasting.defaults import TRACK_MAX_MISSING
from forecasting.frame_scores import CausalSmoother
from forecasting.scoring import ScorerConfig, score_windows
from forecasting.windows import (
    Windows,
    cut_windows,
    model_frames,
    rate_ratio,
    score_hold,
    slowest_rate,
    too_slow,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PersonScore:
    """One person's score at one frame."""

    camera: str
    track_id: int
    frame_index: int
    timestamp: float
    score: float
    smoothed: float
    joints: np.ndarray  # (17,)
    bbox: np.ndarray  # (4,)
    keypoints: np.ndarray  # (17, 3)


# model frame, camera frame index, keypoints, bbox, timestamp
_Row = tuple[int, int, np.ndarray, np.ndarray, float]


@dataclass(slots=True)
class _Track:
    rows: deque[_Row]
    smoother: CausalSmoother
    last_frame: int = -1  # model frame (see the module docstring)
    last_index: int = -1  # the camera's frame index
    scored_at: int = -(10**9)
    scored_index: int = -1  # the camera's frame index of the last score


class TrackScorer:
    """Buffers, scores and smooths the persons of any number of cameras.

    Arguments:
        ckpt: the forecaster.
        cfg: scorer configuration.
        stride: score a person at most every ``stride`` model frames (frames at the model's
            rate: a camera frame the person is in, once that many have passed).
        sigma: causal smoothing, in the camera's frames: each score of a person holds over
            the frames until the next (at most :func:`~forecasting.windows.score_hold`), as
            offline frame scores hold it, so ``evaluate``/``calibrate`` smooth the same.
        max_missing: a track unseen for more model frames than this is forgotten.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        cfg: ScorerConfig,
        stride: int = 1,
        sigma: float = 6.0,
        max_missing: int = TRACK_MAX_MISSING,
    ):
        self.ckpt = ckpt
        self.cfg = cfg
        self.stride = max(1, stride)
        self.sigma = sigma
        self.max_missing = max_missing
        w = ckpt.window_config
        self.span = (w.length - 1) * w.frame_step + 1  # frames a window covers
        self.model_fps = ckpt.fps
        # the slowest camera whose gaps (model frames between two of its frames) are filled
        self.slowest_fps = slowest_rate(self.model_fps, w.max_gap)
        self._too_slow: set[str] = set()
        self._tracks: dict[tuple[str, int], _Track] = {}
        self.forecast_s = 0.0  # seconds spent drawing futures, summed over calls
        self.duplicates = 0  # person frames dropped: that frame of that track was seen
        self.restarts = 0  # tracks restarted: a frame index behind the track's last one
        # person frames not scored: untracked (track id -1), so no track to forecast from
        self.untracked = 0
        self.decimated = 0  # person frames skipped: a faster camera's, on a model frame taken
        self.rate_changes = 0  # cameras whose stated rate changed: their tracks started over
        self._stated: dict[str, float | None] = {}  # camera -> the rate its frames state

    def warmup(self, persons: int = 4) -> None:
        """Score a few synthetic windows once: the first model call's one-time costs (torch
        kernel selection, allocations; ~1 s) are paid before a live camera's frames queue up."""
        n_len = 1 + self.ckpt.model.cfg.t_obs + self.ckpt.model.cfg.horizon
        rng = np.random.default_rng(0)
        poses = rng.normal(0.0, 0.1, (persons, n_len, 17, 2)).astype(np.float32)
        ones = np.ones((persons, n_len, 17), bool)
        score_windows(self.ckpt.model, poses, ones, ones, self.cfg)

    def cameras(self) -> set[str]:
        return {c for c, _ in self._tracks}

    def drop_camera(self, camera: str) -> list[int]:
        """Forget every buffer of a camera (e.g. its partition moved to another scorer);
        returns the track ids forgotten."""
        keys = [k for k in self._tracks if k[0] == camera]
        for key in keys:
            del self._tracks[key]
        return [k[1] for k in keys]

    def model_frame(self, frame: PoseFrame) -> int:
        """The frame's place on the model's time axis (its index when its rate is not
        stated or is the model's). A camera too slow for the gaps between its frames to be
        filled (:attr:`slowest_fps`) is logged once: its persons are never scored."""
        return self._place(frame)[0]

    def _place(self, frame: PoseFrame) -> tuple[int, bool]:
        """:meth:`model_frame`, and whether the camera is too slow to be scored."""
        slow = too_slow(frame.fps, self.model_fps, self.ckpt.window_config.max_gap)
        if slow and frame.camera not in self._too_slow:
            self._too_slow.add(frame.camera)
            log.warning(
                "camera %s: %.3g fps is below the %.3g fps the model can score (%d model "
                "frames at most between two frames); its persons are not scored. Raise the "
                "camera's frame rate",
                frame.camera, frame.fps, self.slowest_fps, self.ckpt.window_config.max_gap,
            )  # fmt: skip
        return int(model_frames(frame.frame_index, frame.fps, self.model_fps)), slow

    def _rate_changed(self, frame: PoseFrame) -> list[int]:
        """Start the camera's tracks over when the frame's stated rate puts it on another
        time axis than its previous frames; returns the track ids dropped."""
        fps, known = frame.fps, frame.camera in self._stated
        before = self._stated.get(frame.camera)
        self._stated[frame.camera] = fps
        if not known or rate_ratio(before, self.model_fps) == rate_ratio(fps, self.model_fps):
            return []
        self.rate_changes += 1
        log.info(
            "camera %s: its frame rate is now stated as %s; its tracks start over",
            frame.camera, f"{fps:g} fps" if fps else "unknown",
        )  # fmt: skip
        return self.drop_camera(frame.camera)

    def forget_stale(self, camera: str, frame_index: int, fps: float | None = None) -> list[int]:
        """Drop tracks of ``camera`` unseen for more than ``max_missing`` model frames at its frame
        ``frame_index`` (``fps``: the camera's rate; None: the rate its frames last stated);
        returns their ids."""
        rate = self._stated.get(camera) if fps is None else fps
        return self._forget(camera, int(model_frames(frame_index, rate, self.model_fps)))

    def _forget(self, camera: str, now: int) -> list[int]:
        """:meth:`forget_stale` at model frame ``now``."""
        gone = [
            k
            for k, t in self._tracks.items()
            if k[0] == camera and now - t.last_frame > self.max_missing
        ]
        for k in gone:
            del self._tracks[k]
        return [k[1] for k in gone]

    def _window(self, tr: _Track) -> np.ndarray:
        last = tr.rows[-1][0]
        first = last - self.span + 1
        kp = np.full((self.span, 17, 3), np.nan, np.float32)
        kp[..., 2] = 0
        for f, _, k, _, _ in tr.rows:
            if f >= first:
                kp[f - first] = k
        return kp

    def add(
        self, frames: Sequence[PoseFrame], seeds: Sequence[int] | None = None
    ) -> list[PersonScore]:
        """Add frames (any cameras, in order per camera); returns the scores they produce.
        ``seeds``: see :meth:`step`."""
        return self.step(frames, seeds)[0]

    def step(
        self, frames: Sequence[PoseFrame], seeds: Sequence[int] | None = None, forget: bool = False
    ) -> tuple[list[PersonScore], list[list[int]]]:
        """Add frames (any cameras, in order per camera) and score the persons due, all in
        one model call.

        Arguments:
            frames: tracked frames.
            seeds: one per frame: the persons of frame ``i`` draw their futures from a
                generator seeded with ``seeds[i]``, so they get the scores they would get
                in a call of their own (:func:`forecasting.scoring.score_windows`);
                default: the whole call draws from ``cfg.seed``.
            forget: after each frame, forget that camera's tracks unseen for more than
                ``max_missing`` frames (as :meth:`forget_stale`), before the next frame is
                buffered.

        Returns:
            The scores, in frame order, and per frame the track ids forgotten after it.
        """
        if seeds is not None and len(seeds) != len(frames):
            raise ValueError(f"{len(seeds)} seeds for {len(frames)} frames")
        # All or nothing: if anything below raises, the buffers are as before the call (so
        # the caller can retry the frames one at a time without them counting as repeats).
        cams = {fr.camera for fr in frames}
        before = {k: (t, list(t.rows), t.last_frame, t.last_index, t.scored_at, t.scored_index) for k, t in self._tracks.items() if k[0] in cams}  # fmt: skip
        counts = (self.duplicates, self.restarts, self.untracked, self.decimated, self.rate_changes)
        stated = dict(self._stated)
        try:
            return self._step(frames, seeds, forget)
        except BaseException:
            for k in [k for k in self._tracks if k[0] in cams]:
                del self._tracks[k]
            for k, (t, rows, last, last_index, scored_at, scored_index) in before.items():
                t.rows.clear()
                t.rows.extend(rows)
                t.last_frame, t.last_index, t.scored_at = last, last_index, scored_at
                t.scored_index = scored_index
                self._tracks[k] = t
            self.duplicates, self.restarts, self.untracked, self.decimated, self.rate_changes = (
                counts
            )
            self._stated = stated
            raise

    def _step(
        self, frames: Sequence[PoseFrame], seeds: Sequence[int] | None, forget: bool
    ) -> tuple[list[PersonScore], list[list[int]]]:
        due: list[tuple[_Track, tuple[str, int], np.ndarray, int, _Row, int]] = []
        lost: list[list[int]] = []
        for i, fr in enumerate(frames):
            t, slow = self._place(fr)
            changed = self._rate_changed(fr)
            hold = score_hold(
                self.stride, self.ckpt.window_config.frame_step, fr.fps, self.model_fps
            )
            for p in () if slow else fr.persons:  # a camera too slow: never scored
                if p.track_id < 0:  # untracked: its frames belong to no one track
                    self.untracked += 1
                    continue
                key = (fr.camera, p.track_id)
                tr = self._tracks.get(key)
                if tr is not None and t <= tr.last_frame:
                    if fr.frame_index == tr.last_index:
                        self.duplicates += 1
                        continue
                    if t == tr.last_frame and fr.frame_index > tr.last_index:
                        self.decimated += 1  # a faster camera: this model frame is taken
                        tr.last_index = fr.frame_index
                        continue
                    self.restarts += 1  # out of order, or the producer restarted
                    tr = None
                if tr is None:
                    tr = self._tracks[key] = _Track(
                        deque(maxlen=self.span), CausalSmoother(self.sigma)
                    )
                tr.rows.append((t, fr.frame_index, p.keypoints, p.bbox, fr.timestamp))
                tr.last_frame, tr.last_index = t, fr.frame_index
                if t - tr.rows[0][0] + 1 < self.span:
                    continue
                if t - tr.scored_at < self.stride:
                    continue
                # frames since the person's last score, over which it holds (smoothing counts
                # frames, as offline frame scores do)
                after = 1 if tr.scored_index < 0 else min(fr.frame_index - tr.scored_index, hold)
                due.append((tr, key, self._window(tr), i, tr.rows[-1], after))
                tr.scored_at, tr.scored_index = t, fr.frame_index
            gone = self._forget(fr.camera, t) if forget else []  # t: this frame's model frame
            lost.append(changed + [g for g in gone if g not in changed])
        wcfg = self.ckpt.window_config
        parts, owners = [], []
        for tr, key, kp, i, row, after in due:
            w = cut_windows(kp, wcfg, starts=np.array([0]), fill="window")
            if len(w):
                parts.append(w)
                owners.append((tr, key, i, row, after))
        if not parts:
            return [], lost
        batch = Windows.concat(parts)
        win_seeds = None if seeds is None else np.array([seeds[o[2]] for o in owners], np.int64)
        s = score_windows(
            self.ckpt.model, batch.poses, batch.mask, batch.visible, self.cfg, win_seeds
        )
        self.forecast_s += s.forecast_s
        out = []
        for n, (tr, key, _, (_, f, k, bbox, ts), after) in enumerate(owners):
            out.append(
                PersonScore(
                    camera=key[0],
                    track_id=key[1],
                    frame_index=f,
                    timestamp=ts,
                    score=float(s.score[n]),
                    smoothed=tr.smoother.update(float(s.score[n]), after),
                    joints=s.joints[n],
                    bbox=bbox,
                    keypoints=k,
                )
            )
        return out, lost
