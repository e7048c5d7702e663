"""Live scoring gives the offline evaluation's scores (same code path)."""

from pathlib import Path

import numpy as np
import pytest

from detector.datasets import load_split
from detector.pose import frames_from_tracks
from forecasting.checkpoint import load_checkpoint
from forecasting.scoring import ScorerConfig
from pipelines.clip_scoring import score_clip
from pipelines.track_scoring import TrackScorer


@pytest.mark.slow
def test_live_scores_equal_offline_scores(aihub2: Path, trained_checkpoint: Path) -> None:
    ck = load_checkpoint(trained_checkpoint)
    clip = next(c for c in load_split(aihub2, "test") if len(c.tracks) == 3)
    # Keep the first 400 frames of the clip (every person in it) to keep the test short.
    for tr in clip.tracks.values():
        keep = tr.frames < 400
        tr.frames, tr.keypoints, tr.scores, tr.present = (
            tr.frames[keep],
            tr.keypoints[keep],
            tr.scores[keep],
            tr.present[keep],
        )
    clip.tracks = {k: t for k, t in clip.tracks.items() if len(t)}
    clip.labels = clip.labels[:400] if clip.labels is not None else None
    cfg = ScorerConfig(name="nll")  # deterministic: exact equality is expected
    offline = score_clip(ck.model, ck.window_config, clip, cfg, stride=1)
    live = TrackScorer(ck, cfg, stride=1, sigma=0)
    got: dict[int, dict[int, float]] = {}
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))
    for i in range(0, len(frames), 7):  # arbitrary batches of frames
        for s in live.add(frames[i : i + 7]):
            got.setdefault(s.track_id, {})[s.frame_index] = s.score
    compared = 0
    for tid, per in offline.persons.items():
        for f in np.flatnonzero(np.isfinite(per)):
            assert got[tid][int(f)] == pytest.approx(per[f], rel=1e-4, abs=1e-4)
            compared += 1
    assert compared > 300
    assert sum(len(v) for v in got.values()) == compared
    live.drop_camera("cam")
    assert live.cameras() == set()


def test_untracked_persons_are_counted_and_never_joined_into_one_track(
    aihub2: Path, tmp_path: Path
) -> None:
    """Track id -1 means "not tracked": two people with it are no one person's motion."""
    from dataclasses import replace

    from tests.conftest import tiny_checkpoint

    ck = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    clip = next(c for c in load_split(aihub2, "test") if len(c.tracks) >= 2)
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))[:120]
    scorer = TrackScorer(ck, ScorerConfig(name="nll"), stride=1, sigma=0)
    untracked = [replace(f, persons=[replace(p, track_id=-1) for p in f.persons]) for f in frames]
    assert scorer.add(untracked) == []
    assert scorer.untracked == sum(len(f.persons) for f in frames) >= 120
    scored = scorer.add([replace(f, frame_index=f.frame_index + 1000) for f in frames])
    assert scored and all(s.track_id >= 0 for s in scored)  # tracked people still score


@pytest.mark.parametrize("stride", [1, 3])
def test_a_person_gone_longer_than_max_missing_starts_over_offline_as_live(
    aihub2: Path, tmp_path: Path, stride: int
) -> None:
    """The service forgets a person unseen for ``max_missing`` model frames; seen again, they
    start over (a full window before the next score, a new stride phase). Offline scores
    (``evaluate``, ``calibrate``, feedback) must score the same windows at the same frames."""
    from dataclasses import replace

    from detector.pose import PoseFrame
    from tests.conftest import tiny_checkpoint

    ck = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    clip = next(c for c in load_split(aihub2, "test") if len(c.tracks) >= 1)
    n = 400
    tid, tr = max(clip.tracks.items(), key=lambda kv: int(kv[1].present[:n].sum()))
    keep = tr.frames < n
    present = tr.present[keep].copy()
    gone = (tr.frames[keep] >= 100) & (tr.frames[keep] < 170)  # 70 frames: forgotten
    brief = (tr.frames[keep] >= 250) & (tr.frames[keep] < 280)  # 30 frames: kept
    present[gone | brief] = False
    kp = tr.keypoints[keep].copy()
    kp[~present] = (np.nan, np.nan, 0.0)
    tr.frames, tr.keypoints, tr.scores, tr.present = (
        tr.frames[keep], kp, tr.scores[keep], present,
    )  # fmt: skip
    clip.tracks = {tid: tr}
    clip.labels = clip.labels[:n] if clip.labels is not None else None
    cfg = ScorerConfig(name="nll")
    offline = score_clip(ck.model, ck.window_config, clip, cfg, stride=stride)
    seen = {int(f): bool(p) for f, p in zip(tr.frames, tr.present, strict=True)}
    by_index = {f.frame_index: f for f in frames_from_tracks(clip.tracks, "cam", (1920, 1080))}
    empty = PoseFrame(camera="cam", frame_index=0, timestamp=0.0, image_size=(1920, 1080), persons=[])  # fmt: skip
    frames = [by_index.get(i) or replace(empty, frame_index=i, timestamp=i / 30) for i in range(n)]
    live = TrackScorer(ck, cfg, stride=stride, sigma=0)
    got: dict[int, float] = {}
    for i in range(0, n, 9):
        for s in live.step(frames[i : i + 9], forget=True)[0]:
            got[s.frame_index] = s.score
    per = offline.persons[tid]
    held = np.full(n, np.nan)  # offline holds a score over the frames until the next
    for f, v in got.items():
        held[f : f + stride] = v
    assert np.array_equal(np.isfinite(held), np.isfinite(per)), np.flatnonzero(
        np.isfinite(held) != np.isfinite(per)
    )
    assert np.allclose(held[np.isfinite(per)], per[np.isfinite(per)], rtol=1e-4, atol=1e-4)
    span = ck.window_config.length
    back = next(f for f in range(170, n) if seen.get(f))  # seen again
    assert min(f for f in got if f >= back) >= back + span - 1  # a full window first
    assert any(280 <= f < 280 + span - 1 for f in got)  # 30 frames: not forgotten
