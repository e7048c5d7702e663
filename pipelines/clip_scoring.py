"""Scores of whole clips: every person window of a clip scored and turned into frame scores,
and the alert threshold fitted on them.

Used offline (``posewatch evaluate`` / ``calibrate``, :mod:`pipelines.offline`) and live
(cold start fits its threshold on the held-out footage it learned from), so this module
imports neither typer nor (unless a progress bar is asked for) tqdm.

A clip's frame score is the worst person's score in that frame; each window's score is
placed on the window's last frame (causal: the live service computes exactly these scores,
see :mod:`pipelines.track_scoring`), and frames nobody is scored in get the clip's most
normal score (:func:`forecasting.frame_scores.worst_person`).

Example (holding sparse scores, as ``stride`` > 1 does):
    >>> import numpy as np
    >>> _hold(np.array([1.0, np.nan, np.nan, 2.0, np.nan]), 2).tolist()
    [1.0, 1.0, nan, 2.0, 2.0]
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from detector.datasets import Clip
from detector.pose import Track
from forecasting.calibration import Calibration, calibrate_threshold, normal_segments
from forecasting.checkpoint import Checkpoint
from forecasting.defaults import MODEL_FPS, TRACK_MAX_MISSING
from forecasting.frame_scores import person_frame_scores, smooth, worst_person
from forecasting.scoring import ScorerConfig, score_windows_many
from forecasting.torch_model import Forecaster
from forecasting.windows import (
    WindowConfig,
    cut_windows,
    model_frames,
    same_rate,
    score_hold,
    slowest_rate,
    too_slow,
)


@dataclass(slots=True)
class ClipScores:
    """Raw (unsmoothed) frame scores of one clip, with its labels and per-person scores.

    Attributes:
        name: clip name.
        frames: ``(N,)`` raw frame scores (worst person, empty frames filled), in the
            scorer's units (higher = more anomalous).
        labels: ``(N,)`` frame labels (1 = anomalous; zeros for an unlabelled clip).
        persons: track id -> ``(N,)`` that person's scores, NaN where not scored.
        windows: person windows scored.
    """

    name: str
    frames: np.ndarray
    labels: np.ndarray
    persons: dict[int, np.ndarray] = field(default_factory=dict)
    windows: int = 0


def score_clip(
    model: Forecaster,
    wcfg: WindowConfig,
    clip: Clip,
    scorer: ScorerConfig,
    stride: int = 1,
    rates: tuple[float | None, float] = (None, MODEL_FPS),
    origin: int = 0,
) -> ClipScores:
    """Score every window (stride ``stride``, in kept frames) of every track of a clip.

    Each window's score is placed on its last frame and gaps are filled within each window
    only (causal: the live service computes exactly these scores, see track_scoring).
    ``rates``: ``(the clip's frame rate, the model's)``, frames/s; a clip at another rate
    than the model's is scored on the model's time axis as the live service does
    (:func:`forecasting.windows.model_frames`), each score given to the clip's frame
    there and held over the clip's frames that share a model frame. ``origin``: the stream's
    frame index of the clip's frame 0 (an episode cut from a camera's stream: its frames
    are placed by their index in the stream, as live).

    Raises:
        ValueError: an unknown scorer, a posture scorer for a model without posture flows,
            or a clip rate too slow for the model
            (:func:`~forecasting.windows.too_slow`: the live service never scores it).
    """
    many = score_clip_many(model, wcfg, clip, scorer, (scorer.name,), stride, rates, origin)
    return many[scorer.name]


def score_clip_many(
    model: Forecaster,
    wcfg: WindowConfig,
    clip: Clip,
    scorer: ScorerConfig,
    names: Sequence[str],
    stride: int = 1,
    rates: tuple[float | None, float] = (None, MODEL_FPS),
    origin: int = 0,
    max_missing: int = TRACK_MAX_MISSING,
) -> dict[str, ClipScores]:
    """:func:`score_clip` for several scorers ``names`` from one draw of futures per window
    (``scorer`` gives K, the sampler and the seed); returns scorer name -> clip scores.
    ``max_missing``: a person unseen for more model frames than this is forgotten by the
    live scorer and starts over (:func:`restarts`; with ``frame_step`` 1, the default:
    windows of a coarser ``frame_step`` are cut at ``stride`` without the live rhythm)."""
    fps, model_fps = rates
    if too_slow(fps, model_fps, wcfg.max_gap):
        raise ValueError(
            f"{clip.name}: {fps:g} fps is below the {slowest_rate(model_fps, wcfg.max_gap):.3g} "
            f"fps a model of {model_fps:g} fps footage can score ({wcfg.max_gap} model frames at "
            "most between two frames); give the footage's real frame rate"
        )
    n = clip.num_frames
    persons: dict[str, dict[int, np.ndarray]] = {k: {} for k in names}
    n_windows = 0
    for tid, tr in clip.tracks.items():
        kp, present, frame_of = tr.keypoints, tr.present, tr.frames
        hold = score_hold(stride, wcfg.frame_step, fps, model_fps)  # frames a score stands for
        at = tr.frames + origin
        if not same_rate(fps, model_fps):
            at = model_frames(at, fps, model_fps)
            kp, present, frame_of = _model_axis(tr, at)
        if wcfg.frame_step == 1:  # the windows the live scorer scores (see live_ends)
            starts = restarts(tr.present, at, max_missing)
            ends = live_ends(np.flatnonzero(present), wcfg.length - 1, stride, starts)
            w = cut_windows(kp, wcfg, starts=ends - (wcfg.length - 1), fill="window")
        else:
            w = cut_windows(kp, wcfg, stride=stride, fill="window")
            if len(w):  # a window is scored at its last frame only if the person is there
                w = w.select(present[w.start + (wcfg.length - 1) * wcfg.frame_step])
        if len(w) == 0:
            continue
        many = score_windows_many(model, w.poses, w.mask, w.visible, scorer, names)
        n_windows += len(w)
        end_rows = w.start + (wcfg.length - 1) * wcfg.frame_step
        for k, s in many.items():
            x = person_frame_scores(frame_of[end_rows], s.score, n)
            # hold each score until the next scored frame (stride > 1, a faster camera)
            persons[k][tid] = _hold(x, hold) if hold > 1 else x
    labels = clip.frame_labels()[:n]
    return {
        k: ClipScores(clip.name, worst_person(list(pp.values()), n), labels, pp, n_windows)
        for k, pp in persons.items()
    }


def live_ends(
    rows: np.ndarray, first: int, stride: int, starts: np.ndarray | None = None
) -> np.ndarray:
    """The rows at which the live scorer scores a track (:class:`~pipelines.track_scoring.
    TrackScorer`): of the rows the person is in (``rows``, increasing), the first at or
    after ``first`` (a full window behind it), then each first one at least ``stride`` rows
    after the last scored. ``starts`` (increasing rows; see :func:`restarts`): where the
    live scorer started the track over; each part is scored as a track of its own
    (``first`` rows after its start; rows before the first start are not scored).

    >>> live_ends(np.array([3, 4, 5, 7, 8, 9, 10, 13]), 4, 3).tolist()
    [4, 7, 10, 13]
    >>> live_ends(np.array([3, 4, 5, 7, 8, 9, 10, 13]), 4, 3, np.array([0, 7])).tolist()
    [4, 13]
    """
    if starts is not None and len(starts):
        bounds = [*np.asarray(starts, np.int64).tolist()[1:], np.iinfo(np.int64).max]
        parts = []
        for start, end in zip(starts, bounds, strict=True):
            part = rows[(rows >= start) & (rows < end)]
            parts.append(live_ends(part, int(start) + first, stride))
        return np.concatenate(parts).astype(np.int64)
    rows = rows[rows >= first]
    if stride <= 1 or len(rows) == 0:
        return rows
    out, last = [], -stride
    for r in rows.tolist():
        if r - last >= stride:
            out.append(r)
            last = r
    return np.asarray(out, np.int64)


def restarts(present: np.ndarray, at: np.ndarray, max_missing: int) -> np.ndarray:
    """Rows (model frames after the track's first, ``at - at[0]``) at which the live
    service starts a track over (:meth:`~pipelines.track_scoring.TrackScorer.step` with
    ``forget``): its first row, and each sighting after the camera's previous frame came
    more than ``max_missing`` model frames after the person's last sighting.

    Arguments:
        present: ``(T,)`` bool, the person seen in each of the track's frames (consecutive
            camera frames).
        at: ``(T,)`` int, each frame's model frame.
        max_missing: the live scorer's ``max_missing``.

    >>> seen = np.array([1, 1, 0, 0, 0, 1, 0, 1], bool)
    >>> restarts(seen, np.arange(8), 2).tolist()
    [0, 5]
    """
    seen = np.flatnonzero(present)
    if len(seen) == 0:
        return np.zeros(0, np.int64)
    gone = at[seen[1:] - 1] - at[seen[:-1]] > max_missing
    return (at[np.concatenate([seen[:1], seen[1:][gone]])] - at[0]).astype(np.int64)


def _model_axis(tr: Track, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A track placed on the model's time axis (``rows``: each frame's model frame):
    ``(keypoints (R, 17, 3) NaN where no frame, present (R,), the clip frame of each model
    frame (R,), -1 where none)``; of frames sharing a model frame the first seen is kept."""
    r = rows - rows[0]
    kp = np.full((int(r[-1]) + 1, *tr.keypoints.shape[1:]), np.nan, np.float32)
    kp[..., 2] = 0.0
    present = np.zeros(len(kp), bool)
    frame_of = np.full(len(kp), -1, np.int64)
    seen = np.flatnonzero(tr.present)
    at, first = np.unique(r[seen], return_index=True)
    kp[at], present[at], frame_of[at] = tr.keypoints[seen[first]], True, tr.frames[seen[first]]
    return kp, present, frame_of


def _hold(x: np.ndarray, span: int) -> np.ndarray:
    """Copy of ``x`` (``(N,)``) with each finite value repeated over up to ``span - 1``
    following NaN frames."""
    out = x.copy()
    last = np.nan
    left = 0
    for i in range(len(out)):
        if np.isfinite(out[i]):
            last, left = out[i], span - 1
        elif left > 0:
            out[i], left = last, left - 1
    return out


def pooled(
    clips: Sequence[ClipScores], sigma: float, causal: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Smoothed scores and labels of all clips concatenated, plus per-clip pairs.

    Arguments:
        clips: clip scores (at least one).
        sigma: Gaussian smoothing, frames.
        causal: half-Gaussian over past frames only (what the live service can do) instead
            of the symmetric one.

    Returns:
        ``(scores (F,), labels (F,), [(scores (N_c,), labels (N_c,)) per clip])`` with ``F``
        the frames of all clips.
    """
    per = [(smooth(c.frames, sigma, causal), c.labels) for c in clips]
    return np.concatenate([p[0] for p in per]), np.concatenate([p[1] for p in per]), per


def score_split(
    ckpt: Checkpoint,
    clips: Sequence[Clip],
    scorer: ScorerConfig,
    stride: int = 1,
    progress: bool = True,
    fps: float | None = None,
) -> tuple[list[ClipScores], float, int]:
    """Score all clips with the checkpoint's model (``fps``: the clips' frame rate, None:
    the model's; see :func:`score_clip`).

    Returns:
        ``(clip scores in the order of clips, seconds, windows scored)``.

    Raises:
        ValueError: as :func:`score_clip`.
    """
    many, secs, n_windows = score_split_many(
        ckpt, clips, scorer, (scorer.name,), stride, progress, fps
    )
    return many[scorer.name], secs, n_windows


def score_split_many(
    ckpt: Checkpoint,
    clips: Sequence[Clip],
    scorer: ScorerConfig,
    names: Sequence[str],
    stride: int = 1,
    progress: bool = True,
    fps: float | None = None,
) -> tuple[dict[str, list[ClipScores]], float, int]:
    """:func:`score_split` for several scorers sharing one draw of futures per window;
    returns ``({scorer name: clip scores}, seconds, windows scored)``. ``progress`` shows a
    tqdm bar (one step per clip) on stderr."""
    t0 = time.perf_counter()
    out: dict[str, list[ClipScores]] = {k: [] for k in names}
    n_windows = 0
    for clip in _progress(clips, progress, f"score {'+'.join(names)}"):
        rates = (fps, ckpt.fps)
        many = score_clip_many(ckpt.model, ckpt.window_config, clip, scorer, names, stride, rates)
        for k, cs in many.items():
            out[k].append(cs)
        n_windows += next(iter(many.values())).windows
    return out, time.perf_counter() - t0, n_windows


def _progress(clips: Sequence[Clip], progress: bool, desc: str) -> Iterable[Clip]:
    """``clips``, wrapped in a tqdm bar when ``progress`` (tqdm is imported only then)."""
    if not progress:
        return clips
    from tqdm import tqdm

    return tqdm(clips, desc=desc, unit="clip")


def calibrate_on_clips(
    clips: Sequence[ClipScores], sigma: float, fps: float, target_per_hour: float, min_duration: int
) -> Calibration:
    """Fit the threshold on the normal segments of (validation) clips' causal-smoothed scores.

    Arguments:
        clips: raw clip scores (normal frames are those labelled 0; segments shorter than
            10 frames are dropped).
        sigma: causal smoothing, frames (the service's).
        fps: frame rate, frames per second.
        target_per_hour: false alerts per camera-hour the threshold allows.
        min_duration: frames an alert must last.

    Raises:
        ValueError: from :func:`forecasting.calibration.calibrate_threshold` (e.g. no normal
            frames to fit on).
    """
    streams = []
    for c in clips:
        streams.extend(normal_segments(smooth(c.frames, sigma, True), c.labels, min_len=10))
    return calibrate_threshold(streams, fps, target_per_hour, min_duration)


__all__ = [
    "ClipScores",
    "calibrate_on_clips",
    "pooled",
    "score_clip",
    "score_clip_many",
    "score_split",
    "score_split_many",
]
