"""Alert messages and the alert lifecycle of one camera.

One *episode* per anomalous person: ``new`` once the smoothed score has stayed above the
threshold for ``min_duration_s``; ``update`` at most every ``update_interval_s`` while it
lasts; ``end`` when the score falls below ``threshold - hysteresis`` (or the track is lost,
or the service stops). After ``end`` the same person cannot alert again for ``cooldown_s``.

Alert ids are deterministic (UUID5 of camera, track and the episode's first frame), so the
same input gives the same ids in any process: subscribers deduplicate by id.

Example:
    >>> life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0)
    >>> [a.type for a in life.update(3, 0.0, 0, 2.0)]
    ['new']
    >>> [a.type for a in life.update(3, 0.1, 1, 0.5)]
    ['end']
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detector.skeleton import KEYPOINT_NAMES

#: Version of the alert message. 2 (session 8): adds ``snapshot`` (file name and web-view
#: URL of the episode's picture) and ``model.id``; version 1 messages (neither field) are
#: still read. 1: the first message.
SCHEMA_VERSION: Literal[2] = 2
EPS = 1e-6  # seconds: frame timestamps like i / fps do not add up exactly
ALERT_NAMESPACE = uuid.UUID("6f1c1f0e-3a7b-5c2d-9e4f-70a5e0c1b2d3")

log = logging.getLogger(__name__)


class JointContribution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(title="Joint", description="COCO keypoint name.")
    score: float = Field(
        title="Contribution", description="The joint's share of the anomaly score."
    )


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(title="Model", description="Forecaster and sampler that scored the person.")
    version: str = Field(title="Version", description="Code version of the checkpoint.")
    id: str = Field(
        "",
        title="Model id",
        description="Hash of the weights (and posture flows) that scored: operator verdicts "
        "refine the threshold of this model only. Empty in version 1 messages.",
    )


class SnapshotRef(BaseModel):
    """Where a subscriber fetches the picture of an alert's episode."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(
        title="File",
        description="File name <camera>-<alert id>.jpg: in outputs.snapshots when set, and in "
        "the alert store (`posewatch alerts show ID --snapshot FILE`).",
    )
    url: str | None = Field(
        None,
        title="URL",
        description="The picture in the web view (when the UI is on): GET it for the JPEG.",
    )


class Alert(BaseModel):
    """An alert message (topic ``posewatch.alerts``, key = camera)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1, 2] = Field(
        SCHEMA_VERSION,
        title="Schema version",
        description="Message schema version: 2 adds `snapshot` and `model.id` (1 is still read).",
    )
    alert_id: str = Field(
        title="Alert id", description="Stable id of the episode (UUID5); dedupe on it."
    )
    type: Literal["new", "update", "end"] = Field(title="Type", description="Lifecycle event.")
    camera: str = Field(title="Camera", description="Camera name.")
    track_id: int = Field(title="Track", description="Per-camera person track id.")
    start_ts: float = Field(
        title="Start", description="Time of the episode's first anomalous frame (s)."
    )
    last_ts: float = Field(
        title="Last", description="Time of the frame this message describes (s)."
    )
    end_ts: float | None = Field(
        None, title="End", description="Time the episode ended (end only)."
    )
    frame_index: int = Field(
        title="Frame", description="Index of the frame this message describes."
    )
    score: float = Field(title="Score", description="Smoothed anomaly score at that frame.")
    threshold: float = Field(title="Threshold", description="Alert threshold in force.")
    peak_score: float = Field(
        title="Peak", description="Highest smoothed score of the episode so far."
    )
    bbox: list[float] = Field(
        title="Box", description="x1, y1, x2, y2 pixels.", min_length=4, max_length=4
    )
    keypoints: list[list[float]] = Field(
        title="Keypoints",
        description="17 x [x, y, conf] pixels of the flagged frame; missing = [0, 0, 0].",
    )
    top_joints: list[JointContribution] = Field(
        title="Top joints", description="Joints that moved most unexpectedly, highest first."
    )
    model: ModelInfo = Field(title="Model", description="What produced the score.")
    produced_at: float = Field(title="Produced", description="UNIX time the message was made.")
    snapshot: SnapshotRef | None = Field(
        None,
        title="Snapshot",
        description="The episode's picture (the frame of `new`): file name, and its URL in "
        "the web view when the UI is on. None when neither the alert store nor "
        "outputs.snapshots keeps pictures.",
    )


def snapshot_file(camera: str, alert_id: str) -> str:
    """The file name of an episode's snapshot.

    >>> snapshot_file("gate", "1234")
    'gate-1234.jpg'
    """
    return f"{camera}-{alert_id}.jpg"


def alert_schema() -> dict[str, Any]:
    """JSON Schema of :class:`Alert` (checked in as ``schemas/alert.schema.json``)."""
    return Alert.model_json_schema()


class State(enum.StrEnum):
    IDLE = "idle"
    PENDING = "pending"
    ACTIVE = "active"
    COOLDOWN = "cooldown"


@dataclass(slots=True)
class _Episode:
    state: State = State.IDLE
    since: float = 0.0
    start_frame: int = 0
    alert_id: str = ""
    peak: float = -np.inf
    last_sent: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


def top_joints(contrib: np.ndarray | None, k: int) -> list[JointContribution]:
    """The ``k`` joints with the largest contributions (NaN ignored)."""
    if contrib is None:
        return []
    c = np.asarray(contrib, np.float64)
    order = [int(i) for i in np.argsort(-np.nan_to_num(c, nan=-np.inf)) if np.isfinite(c[i])]
    return [JointContribution(name=KEYPOINT_NAMES[i], score=float(c[i])) for i in order[:k]]


class AlertLifecycle:
    """Episodes of the persons of one camera.

    Arguments:
        camera: camera name.
        threshold: score above which a person is anomalous.
        min_duration_s, hysteresis, update_interval_s, cooldown_s: see the module docstring.
        top_k: joints named per alert.
        model: model name and version stamped on alerts.
    """

    def __init__(
        self,
        camera: str,
        threshold: float,
        min_duration_s: float = 0.5,
        hysteresis: float = 0.0,
        update_interval_s: float = 5.0,
        cooldown_s: float = 10.0,
        top_k: int = 3,
        model: ModelInfo | None = None,
    ):
        self.camera = camera
        self.threshold = float(threshold)
        self.min_duration_s = min_duration_s
        self.hysteresis = hysteresis
        self.update_interval_s = update_interval_s
        self.cooldown_s = cooldown_s
        self.top_k = top_k
        self.model = model or ModelInfo(name="gru-nf", version="unknown")
        self._episodes: dict[int, _Episode] = {}
        self._last_ts: float | None = None
        self._frame_dt = 0.0
        #: times the camera's frame timestamps went back (a clock correction, a replay)
        self.clock_steps = 0

    def is_open(self, track_id: int) -> bool:
        """Whether the person has an open (``new`` sent, no ``end`` yet) episode."""
        ep = self._episodes.get(track_id)
        return ep is not None and ep.state == State.ACTIVE

    @property
    def open_episodes(self) -> int:
        return sum(1 for e in self._episodes.values() if e.state == State.ACTIVE)

    def _alert(
        self, ep: _Episode, kind: Literal["new", "update", "end"], track: int, end_ts: float | None
    ) -> Alert:
        last = ep.last
        if kind != "update":  # one log line per episode start and end
            log.info(
                "alert %s: camera %s, person %d, score %.3f (peak %.3f, threshold %.3f)%s; id %s",
                kind, self.camera, track, last["score"], ep.peak, self.threshold,
                f", {last['ts'] - ep.since:.1f} s" if end_ts is not None else "", ep.alert_id,
            )  # fmt: skip
        return Alert(
            alert_id=ep.alert_id,
            type=kind,
            camera=self.camera,
            track_id=track,
            start_ts=ep.since,
            last_ts=last["ts"],
            end_ts=end_ts,
            frame_index=last["frame"],
            score=last["score"],
            threshold=self.threshold,
            peak_score=float(ep.peak),
            bbox=last["bbox"],
            keypoints=last["keypoints"],
            top_joints=last["joints"],
            model=self.model,
            produced_at=time.time(),
        )

    def update(
        self,
        track_id: int,
        ts: float,
        frame_index: int,
        score: float,
        bbox: Sequence[float] | None = None,
        keypoints: np.ndarray | None = None,
        joints: np.ndarray | None = None,
    ) -> list[Alert]:
        """Feed one smoothed score of one person; returns the alerts it causes (0 or 1)."""
        self._follow_clock(float(ts))
        ep = self._episodes.setdefault(track_id, _Episode())
        above = score > self.threshold
        kp = (
            np.zeros((17, 3))
            if keypoints is None
            else np.nan_to_num(np.asarray(keypoints, np.float64))
        )
        snapshot = {
            "ts": float(ts),
            "frame": int(frame_index),
            "score": float(score),
            "bbox": [float(v) for v in (bbox if bbox is not None else (0, 0, 0, 0))],
            "keypoints": kp.tolist(),
            "joints": top_joints(joints, self.top_k),
        }
        if ep.state == State.COOLDOWN:
            if ts - ep.since < self.cooldown_s - EPS:
                return []
            ep.state = State.IDLE
        if ep.state == State.IDLE:
            if not above:
                return []
            ep.state, ep.since, ep.start_frame, ep.peak = (
                State.PENDING,
                float(ts),
                int(frame_index),
                score,
            )
        if ep.state == State.PENDING:
            if not above:
                ep.state = State.IDLE
                return []
            ep.peak = max(ep.peak, score)
            if ts - ep.since < self.min_duration_s - EPS:
                return []
            ep.state = State.ACTIVE
            ep.alert_id = str(
                uuid.uuid5(ALERT_NAMESPACE, f"{self.camera}/{track_id}/{ep.start_frame}")
            )
            ep.last = snapshot
            ep.last_sent = float(ts)
            return [self._alert(ep, "new", track_id, None)]
        # ACTIVE
        ep.peak = max(ep.peak, score)
        ep.last = snapshot
        if score < self.threshold - self.hysteresis:
            return self._end(track_id, ep, float(ts))
        if ts - ep.last_sent >= self.update_interval_s - EPS:
            ep.last_sent = float(ts)
            return [self._alert(ep, "update", track_id, None)]
        return []

    def _follow_clock(self, ts: float) -> None:
        """Durations are taken from the frames' timestamps: when they step back (an NTP
        correction of the detector's clock, a replayed stream), every episode's reference
        times move back by the same step (less the latest frame interval: the frame is
        taken to come one interval after the last), so open episodes keep their updates and
        their duration instead of waiting for the clock to catch up (a 60 s step silenced
        them for 60 s). Timestamps that keep going back (a broken clock) hold durations
        still: nothing alerts then, and the warning is logged."""
        last, self._last_ts = self._last_ts, ts
        if last is None:
            return
        if ts >= last:
            if 0 < ts - last < 5.0:
                self._frame_dt = ts - last  # the latest frame interval (persons share one)
            return
        step = last - ts + self._frame_dt  # the frame came one interval after the last
        for ep in self._episodes.values():
            ep.since -= step
            ep.last_sent -= step
        self.clock_steps += 1
        if self.clock_steps == 1 or self.clock_steps % 1000 == 0:
            log.warning(
                "camera %s: frame timestamps went back %.3f s (a clock correction?; %d times "
                "so far); open episodes go on by the new clock",
                self.camera,
                step,
                self.clock_steps,
            )

    def _end(self, track_id: int, ep: _Episode, ts: float) -> list[Alert]:
        alert = self._alert(ep, "end", track_id, ts)
        ep.state, ep.since = State.COOLDOWN, ts
        return [alert]

    def lost(self, track_id: int, ts: float) -> list[Alert]:
        """The track disappeared: end its open episode."""
        ep = self._episodes.pop(track_id, None)
        if ep is None or ep.state != State.ACTIVE:
            return []
        return [self._alert(ep, "end", track_id, float(ts))]

    def close_all(self, ts: float) -> list[Alert]:
        """End every open episode (graceful shutdown)."""
        out: list[Alert] = []
        for tid in list(self._episodes):
            out.extend(self.lost(tid, ts))
        return out
