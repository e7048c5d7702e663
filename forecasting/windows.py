"""Pose windows: gap filling, cutting, per-window normalisation and standardisation.

A *window* is ``1 + t_obs + horizon`` consecutive frames of one track: frame 0 only gives
the displacement of frame 1, frames ``1 .. t_obs`` are observed, the last ``horizon`` frames
are the future to forecast (or, when scoring, the observed frames to explain).

Normalisation (per window): coordinates are taken relative to the person's torso centre at
the last observed frame and divided by the person's size (median over the observed frames
of the larger side of the keypoints' extent), so place and size in the image do not matter
but motion does. A lying person keeps a sensible size because the larger side is used.

Gaps: a keypoint missing for at most ``max_gap`` frames between two sightings is linearly
interpolated; a missing run at a track's start or end of at most ``max_gap`` frames is held
at the nearest sighting. What is still missing after that stays missing: ``mask`` is False
there and its normalised coordinate is set to the training mean pose (0 after
standardisation), so it neither pulls the GRU nor fakes motion.

Example:
    >>> import numpy as np
    >>> kp = np.random.default_rng(0).uniform(100, 200, (40, 17, 3)).astype(np.float32)
    >>> w = cut_windows(kp, WindowConfig(t_obs=8, horizon=4), stride=4)
    >>> w.poses.shape, w.mask.shape
    ((7, 13, 17, 2), (7, 13, 17))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forecasting.defaults import SAME_RATE

J = 17
SHOULDERS = (5, 6)  # COCO-17
HIPS = (11, 12)
TORSO = SHOULDERS + HIPS


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """How windows are cut.

    Attributes:
        t_obs: observed frames (conditioning).
        horizon: future frames forecast / scored.
        frame_step: keep every ``frame_step``-th frame (temporal subsampling of the track).
        max_gap: longest run of missing frames or keypoints (in kept frames) that is filled.
        min_visible: a window is kept for training only if at least this fraction of its
            keypoints was really seen (not filled).
    """

    t_obs: int = 12
    horizon: int = 12
    frame_step: int = 1
    max_gap: int = 8
    min_visible: float = 0.8

    @property
    def length(self) -> int:
        """Frames in a window including the leading displacement frame."""
        return 1 + self.t_obs + self.horizon

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Windows:
    """A batch of normalised windows.

    Attributes:
        poses: ``(N, L, 17, 2)`` float32 normalised coordinates (filled where missing).
        mask: ``(N, L, 17)`` bool, True where the keypoint was seen or gap-filled.
        visible: ``(N, L, 17)`` bool, True where the keypoint was really seen.
        ref: ``(N, 3)`` float32 ``cx, cy, scale``: pixels = poses * scale + (cx, cy).
        track: ``(N,)`` int64 index of the source track (caller's numbering).
        start: ``(N,)`` int64 row of the track where the window starts (frame 0).
    """

    poses: np.ndarray
    mask: np.ndarray
    visible: np.ndarray
    ref: np.ndarray
    track: np.ndarray
    start: np.ndarray

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    def select(self, index: np.ndarray) -> Windows:
        """The windows at ``index`` (bool mask or integer array)."""
        return Windows(
            self.poses[index],
            self.mask[index],
            self.visible[index],
            self.ref[index],
            self.track[index],
            self.start[index],
        )

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        """Concatenate window batches (an empty list gives an empty batch of length 0)."""
        if not parts:
            return Windows(
                np.zeros((0, 1, J, 2), np.float32),
                np.zeros((0, 1, J), bool),
                np.zeros((0, 1, J), bool),
                np.zeros((0, 3), np.float32),
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
            )
        return Windows(
            np.concatenate([p.poses for p in parts]),
            np.concatenate([p.mask for p in parts]),
            np.concatenate([p.visible for p in parts]),
            np.concatenate([p.ref for p in parts]),
            np.concatenate([p.track for p in parts]),
            np.concatenate([p.start for p in parts]),
        )


def same_rate(fps: float | None, model_fps: float) -> bool:
    """Whether footage at ``fps`` is on the model's time axis as it is (``fps`` unknown,
    or within :data:`~forecasting.defaults.SAME_RATE` of ``model_fps``)."""
    return not fps or not np.isfinite(fps) or abs(fps / model_fps - 1.0) <= SAME_RATE


def rate_ratio(fps: float | None, model_fps: float) -> float:
    """Model frames per frame of footage at ``fps``: 1 where :func:`same_rate` (also for a
    rate not stated). Two stretches of a stream with different ratios lie on different time
    axes (a reconnect that states another rate).

    >>> rate_ratio(15.0, 30.0), rate_ratio(29.97, 30.0), rate_ratio(None, 30.0)
    (2.0, 1.0, 1.0)
    """
    return 1.0 if fps is None or same_rate(fps, model_fps) else model_fps / fps


def score_hold(stride: int, frame_step: int, fps: float | None, model_fps: float) -> int:
    """Frames of footage at ``fps`` that one score of a person stands for, at most, when a
    person is scored every ``stride`` model frames (windows of every ``frame_step``-th
    frame): the score holds until the next (offline frame scores, and the frames the live
    smoother counts it for, so smoothing is in frames as configured).

    >>> score_hold(3, 1, None, 30.0), score_hold(3, 1, 15.0, 30.0), score_hold(1, 1, 60.0, 30.0)
    (3, 2, 2)
    """
    if same_rate(fps, model_fps):
        return stride * frame_step
    assert fps is not None
    gap = math.ceil(model_fps / fps)  # model frames between two frames, at most
    return math.ceil((stride + gap - 1) * fps / model_fps)


def slowest_rate(model_fps: float, max_gap: int) -> float:
    """The slowest camera (frames/s) a model whose windows are frames at ``model_fps`` can
    score: one whose frames leave at most ``max_gap`` model frames between them (the gaps a
    window fills). A slower camera's windows would be mostly made up.

    >>> round(slowest_rate(30.0, 8), 2)
    3.33
    """
    return model_fps / (max_gap + 1)


def too_slow(fps: float | None, model_fps: float, max_gap: int) -> bool:
    """Whether footage stating ``fps`` (None, 0: not stated) is too slow for the model
    (:func:`slowest_rate`): its persons are not scored, live or offline."""
    return bool(fps) and fps is not None and fps < slowest_rate(model_fps, max_gap)


def model_frames(frames: np.ndarray | int, fps: float | None, model_fps: float) -> np.ndarray:
    """Frame indices of footage at ``fps`` placed on the time axis of a model whose windows
    are frames at ``model_fps``: ``floor(frame * model_fps / fps)``, the model frame at or
    before the frame's time. A slower camera's frames land with gaps between them (filled
    like any gap: :func:`fill_gaps`); a faster camera's frames can share a model frame (the
    first is kept). ``fps`` unknown (None, 0) or within
    :data:`~forecasting.defaults.SAME_RATE` of ``model_fps``: the indices unchanged.

    >>> model_frames(np.arange(5), 15.0, 30.0).tolist(), model_frames(7, 29.97, 30.0).tolist()
    ([0, 2, 4, 6, 8], 7)
    >>> model_frames(np.arange(5), 60.0, 30.0).tolist()
    [0, 0, 1, 1, 2]
    """
    f = np.asarray(frames, np.int64)
    if fps is None or same_rate(fps, model_fps):
        return f
    return np.floor(f * (model_fps / fps) + 1e-6).astype(np.int64)  # 2.9999999 is 3


def fill_gaps(xy: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill short runs of missing values along time, per keypoint coordinate.

    Arguments:
        xy: ``(T, 17, 2)`` float, NaN where missing.
        max_gap: longest missing run that is filled (interior: linear; edges: held).

    Returns:
        ``(T, 17, 2)`` float32, still NaN where a run was longer than ``max_gap``.
    """
    out = np.array(xy, dtype=np.float32, copy=True)
    T = out.shape[0]
    t = np.arange(T)
    flat = out.reshape(T, -1)
    for c in range(flat.shape[1]):
        col = flat[:, c]
        ok = np.isfinite(col)
        if ok.all() or not ok.any():
            continue
        idx = np.flatnonzero(ok)
        # Distance (in frames) to the previous and next sighting for each missing frame.
        prev = np.maximum.accumulate(np.where(ok, t, -1))
        nxt = np.minimum.accumulate(np.where(ok, t, T)[::-1])[::-1]
        miss = ~ok
        interior = miss & (prev >= 0) & (nxt < T) & ((nxt - prev - 1) <= max_gap)
        head = miss & (prev < 0) & ((nxt - t) <= max_gap)
        tail = miss & (nxt >= T) & ((t - prev) <= max_gap)
        fill = interior | head | tail
        if fill.any():
            col[fill] = np.interp(t[fill], idx, col[idx]).astype(np.float32)
    return out


def _centre_and_scale(xy: np.ndarray, t_ref: int, t_lo: int) -> tuple[float, float, float] | None:
    """Torso centre at frame ``t_ref`` and size over frames ``t_lo .. t_ref`` (None if unseen)."""
    ref = xy[t_ref]
    torso = ref[list(TORSO)]
    pts = torso[np.isfinite(torso).all(axis=1)]
    if pts.shape[0] < 2:
        pts = ref[np.isfinite(ref).all(axis=1)]
    if pts.shape[0] == 0:
        return None
    cx, cy = pts.mean(axis=0)
    span = xy[t_lo : t_ref + 1]
    ok = np.isfinite(span).all(axis=-1)
    sizes = []
    for f in range(span.shape[0]):
        p = span[f][ok[f]]
        if p.shape[0] >= 3:
            sizes.append(float((p.max(axis=0) - p.min(axis=0)).max()))
    if not sizes:
        return None
    size = float(np.median(sizes))
    if size < 1e-3:
        return None
    return float(cx), float(cy), size


def cut_windows(
    keypoints: np.ndarray,
    cfg: WindowConfig,
    stride: int = 1,
    starts: np.ndarray | None = None,
    track_index: int = 0,
    fill: str = "track",
) -> Windows:
    """Cut normalised windows from one track.

    Arguments:
        keypoints: ``(T, 17, 3)`` x, y, conf in pixels; NaN where missing (missing frames too).
        cfg: window configuration; the track is subsampled by ``cfg.frame_step`` first.
        stride: distance between window starts, in kept frames.
        starts: explicit window starts (rows of the subsampled track); overrides ``stride``.
        track_index: stored in ``Windows.track``.
        fill: ``track`` fills gaps over the whole track (training); ``window`` only within
            each window, as a live scorer can (causal: no frame after the window is used).

    Returns:
        Windows whose observed frames all have a centre and a size; ``start`` is in rows of
        the *original* track (``row * frame_step``).
    """
    xy_all = np.asarray(keypoints, np.float32)[:: cfg.frame_step, :, :2]
    T = xy_all.shape[0]
    L = cfg.length
    if T < L:
        return Windows.concat([])
    seen = np.asarray(np.isfinite(xy_all).all(axis=-1))
    per_window = fill == "window"
    xy = xy_all if per_window else fill_gaps(xy_all, cfg.max_gap)
    filled = np.asarray(np.isfinite(xy).all(axis=-1))
    if starts is None:
        starts = np.arange(0, T - L + 1, stride)
    poses, masks, vis, refs, keep = [], [], [], [], []
    t_ref = cfg.t_obs  # last observed frame inside the window
    for s in starts:
        s = int(s)
        w = fill_gaps(xy[s : s + L], cfg.max_gap) if per_window else xy[s : s + L]
        cs = _centre_and_scale(w, t_ref, min(1, t_ref))
        if cs is None:
            continue
        cx, cy, size = cs
        p = (w - np.array([cx, cy], np.float32)) / size
        m = np.asarray(np.isfinite(w).all(axis=-1)) if per_window else filled[s : s + L]
        p = np.where(m[..., None], p, np.nan)
        poses.append(p)
        masks.append(m)
        vis.append(seen[s : s + L])
        refs.append((cx, cy, size))
        keep.append(s)
    if not poses:
        return Windows.concat([])
    n = len(poses)
    return Windows(
        poses=np.stack(poses).astype(np.float32),
        mask=np.stack(masks),
        visible=np.stack(vis),
        ref=np.asarray(refs, np.float32),
        track=np.full(n, track_index, np.int64),
        start=np.asarray(keep, np.int64) * cfg.frame_step,
    )


def normal_starts(
    labels: np.ndarray, frames: np.ndarray, cfg: WindowConfig, stride: int
) -> np.ndarray:
    """Starts (rows of the subsampled track) of windows whose frames are all labelled normal.

    Arguments:
        labels: ``(N,)`` per-frame labels of the clip (1 = anomalous); frames past its end
            count as normal.
        frames: ``(T,)`` frame index of each track row.
        cfg: window configuration.
        stride: distance between candidate starts.
    """
    f = np.asarray(frames)[:: cfg.frame_step]
    lab = np.zeros(f.shape[0], bool)
    inside = f < labels.shape[0]
    lab[inside] = labels[f[inside]] > 0
    L = cfg.length
    if f.shape[0] < L:
        return np.zeros(0, np.int64)
    bad = np.convolve(lab.astype(np.int64), np.ones(L, np.int64), mode="valid") > 0
    cand = np.arange(0, f.shape[0] - L + 1, stride)
    return cand[~bad[cand]]


@dataclass(frozen=True, slots=True)
class Standardizer:
    """Per-coordinate mean and std of normalised poses and of frame-to-frame displacements.

    Fitted on training windows; saved in the checkpoint.
    """

    pose_mean: np.ndarray  # (34,)
    pose_std: np.ndarray  # (34,)
    disp_mean: np.ndarray  # (34,)
    disp_std: np.ndarray  # (34,)

    @classmethod
    def fit(cls, w: Windows) -> Standardizer:
        """Fit on the observed and future frames of ``w`` (masked values ignored)."""
        p3 = w.poses.reshape(len(w), w.poses.shape[1], -1).astype(np.float64)
        d = (p3[:, 1:] - p3[:, :-1]).reshape(-1, p3.shape[-1])
        p = p3.reshape(-1, p3.shape[-1])
        # A coordinate never seen in training gets mean 0 and unit spread.
        seen_p = np.isfinite(p).any(axis=0)
        seen_d = np.isfinite(d).any(axis=0)
        p[:, ~seen_p] = 0.0
        d[:, ~seen_d] = 0.0
        pm = np.nanmean(p, axis=0)
        ps = np.where(seen_p, np.nanstd(p, axis=0), 1.0)
        dm = np.nanmean(d, axis=0)
        ds = np.where(seen_d, np.nanstd(d, axis=0), 1.0)
        return cls(
            pose_mean=pm.astype(np.float32),
            pose_std=np.maximum(ps, 1e-3).astype(np.float32),
            disp_mean=dm.astype(np.float32),
            disp_std=np.maximum(ds, 1e-4).astype(np.float32),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {
            k: getattr(self, k).tolist() for k in ("pose_mean", "pose_std", "disp_mean", "disp_std")
        }

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Standardizer:
        return cls(**{k: np.asarray(v, np.float32) for k, v in d.items()})


def fill_unseen(poses: np.ndarray, pose_mean: np.ndarray) -> np.ndarray:
    """Replace NaN coordinates by the training mean pose.

    Arguments:
        poses: ``(..., 17, 2)`` normalised poses with NaN where missing.
        pose_mean: ``(34,)`` training mean of normalised poses.
    """
    mean = pose_mean.reshape(J, 2)
    return np.where(np.isfinite(poses), poses, mean).astype(np.float32)


def augment_flip(w: Windows, flip_index: tuple[int, ...] | list[int]) -> Windows:
    """Horizontally mirrored copies of windows (x negated, left/right keypoints swapped)."""
    idx = np.asarray(flip_index)
    poses = w.poses[:, :, idx].copy()
    poses[..., 0] *= -1
    return Windows(poses, w.mask[:, :, idx], w.visible[:, :, idx], w.ref, w.track, w.start)
