"""Injected anomalies: anomalous copies of the future part of real normal windows.

Injection needs no anomaly labels, so every kind can be measured on any set of normal
windows (the validation clips, the normal windows of a test split). Each kind changes only
the frames after the observed past (``t_obs + 1`` onwards) of normalised windows
(:mod:`forecasting.windows`: person-size units, y down):

- ``fall``: the skeleton rotates 90 degrees about the ankles over 4 frames, to one side
  drawn per window (the test's earlier copy drew the side anew every frame);
- ``jump``: the whole body half a body size up for 4 frames, 2 frames in;
- ``run3x``: the future plays at 3x speed (extrapolated past the window's end);
- ``freeze``: the person stops dead at the last observed pose;
- ``reverse``: the person suddenly moves back the way they came: the observed past played
  backwards (walking backwards, facing the same way) at the same speed;
- ``crouch``: the upper body (everything above the hips) sinks toward the hips by half its
  height over 6 frames, then stays (collapsing, ducking).

``fall``, ``jump``, ``run3x`` and ``freeze`` are the kinds of the default scorer's test;
``reverse`` and ``crouch`` are two more, chosen as the unusual *motion* (a sudden reversal) and
unusual *posture change* (sinking down) that none of the first four covers.

Example:
    >>> import numpy as np
    >>> from forecasting.windows import Windows
    >>> p = np.zeros((2, 25, 17, 2), np.float32); p[:, :, :, 0] = np.arange(25)[:, None]
    >>> ok, i = np.ones((2, 25, 17), bool), np.zeros(2, np.int64)
    >>> w = Windows(p, ok, ok, np.zeros((2, 3), np.float32), i, i)
    >>> bad = inject(w, "freeze", 12, np.random.default_rng(0))
    >>> float(bad[0, 20, 0, 0]), float(bad[0, 12, 0, 0])
    (12.0, 12.0)
"""

from __future__ import annotations

from typing import Final

import numpy as np

from forecasting.windows import HIPS, Windows

KINDS: Final = ("fall", "jump", "run3x", "freeze", "reverse", "crouch")

#: Kinds that are only unusual for a person who moves (see :func:`moving`).
MOTION_KINDS: Final = ("run3x", "freeze", "reverse")

_HIPS, _ANKLES = list(HIPS), [15, 16]


def window_speed(w: Windows, t_obs: int) -> np.ndarray:
    """``(N,)`` how fast each window's person moves from the last 4 observed frames to the
    window's end (its real future included: a person who really goes on moving): the mean
    absolute keypoint coordinate change per frame (person-size units per frame; AIHub2
    walking ~0.008, standing with detector jitter ~0.001)."""
    f0 = 1 + t_obs
    return np.nanmean(np.abs(np.diff(w.poses[:, f0 - 4 :], axis=1)), axis=(1, 2, 3))


#: The slowest a person whose motion the motion kinds change may move (person sizes per
#: frame, :func:`window_speed`): a slow walk (AIHub2's walkers: median 0.0083), five times a
#: standing person's detector jitter (about 0.001).
WALKING_SPEED: Final = 0.005


def moving_mask(w: Windows, t_obs: int, min_speed: float | None = None) -> np.ndarray:
    """``(N,)`` bool: the windows whose person moves (:func:`window_speed`) faster than the
    median window and than :data:`WALKING_SPEED`, or, with ``min_speed``, faster than that
    absolute speed: stopping, speeding up or turning back is only unusual for someone who
    moves. The median alone is relative to the window set: on a set where most people stand
    (AIHub2 test: median 0.0013), the windows above it are mostly standing people, and
    "freezing" or "reversing" them only changes detector jitter (until session 27)."""
    speed = window_speed(w, t_obs)
    floor = max(float(np.median(speed)), WALKING_SPEED) if min_speed is None else min_speed
    return speed > floor


def moving(w: Windows, t_obs: int, min_speed: float | None = None) -> Windows:
    """The windows of :func:`moving_mask`."""
    return w.select(moving_mask(w, t_obs, min_speed))


def inject(w: Windows, kind: str, t_obs: int, rng: np.random.Generator) -> np.ndarray:
    """Anomalous copies of the windows' poses ``(N, T, 17, 2)``: frames ``0 .. t_obs`` as
    they are, the future changed by ``kind`` (one of :data:`KINDS`).

    Raises:
        ValueError: an unknown kind.
    """
    p = w.poses.copy()
    f0 = 1 + t_obs
    T = p.shape[1]
    H = T - f0
    if kind == "fall":
        pivot = np.nanmean(p[:, f0 - 1, _ANKLES], axis=1)[:, None]
        side = rng.choice([-1, 1], size=(len(p), 1))
        for i in range(H):
            a = np.pi / 2 * min(1.0, (i + 1) / 4) * side
            rel = p[:, f0 + i] - pivot
            c, s = np.cos(a), np.sin(a)
            p[:, f0 + i, :, 0] = pivot[..., 0] + c * rel[..., 0] - s * rel[..., 1]
            p[:, f0 + i, :, 1] = pivot[..., 1] + s * rel[..., 0] + c * rel[..., 1]
    elif kind == "jump":
        p[:, f0 + 2 : f0 + 6, :, 1] -= 0.5
    elif kind == "run3x":
        for i in range(H):
            src = f0 - 1 + 3 * (i + 1)
            if src < T:
                p[:, f0 + i] = w.poses[:, src]
            else:
                last, prev = w.poses[:, T - 1], w.poses[:, T - 2]
                p[:, f0 + i] = last + (src - T + 1) * (last - prev)
    elif kind == "freeze":
        p[:, f0:] = p[:, f0 - 1 : f0]
    elif kind == "reverse":
        for i in range(H):
            p[:, f0 + i] = w.poses[:, max(f0 - 2 - i, 0)]
    elif kind == "crouch":
        for i in range(H):
            k = 0.5 * min(1.0, (i + 1) / 6)
            y = p[:, f0 + i, :, 1]
            hips_y = np.nanmean(y[:, _HIPS], axis=1)[:, None]  # (N, 1), this frame's hips
            above = y < hips_y
            p[:, f0 + i, :, 1] = np.where(above, y + k * (hips_y - y), y)
    else:
        raise ValueError(f"unknown injected anomaly {kind!r}; choose from {', '.join(KINDS)}")
    return p


def injected(
    w: Windows, kind: str, t_obs: int, min_speed: float | None = None, seed: int = 0
) -> tuple[np.ndarray, Windows, np.ndarray]:
    """The windows ``kind`` is measured on and their anomalous copies: ``(keep, windows,
    poses)``, ``keep`` ``(N,)`` bool over ``w`` (:func:`moving_mask` for
    :data:`MOTION_KINDS`, every window otherwise), ``windows = w.select(keep)`` and
    ``poses`` ``(keep.sum(), T, 17, 2)`` from :func:`inject` with ``default_rng(seed)``.

    Raises:
        ValueError: an unknown kind.
    """
    keep = moving_mask(w, t_obs, min_speed) if kind in MOTION_KINDS else np.ones(len(w), bool)
    sel = w.select(keep)
    return keep, sel, inject(sel, kind, t_obs, np.random.default_rng(seed))


__all__ = [
    "KINDS",
    "MOTION_KINDS",
    "WALKING_SPEED",
    "inject",
    "injected",
    "moving",
    "moving_mask",
    "window_speed",
]
