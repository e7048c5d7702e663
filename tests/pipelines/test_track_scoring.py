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


@pytest.mark.parametrize(("fps", "stride"), [(None, 1), (None, 3), (15.0, 1), (15.0, 3)])
def test_a_person_gone_longer_than_max_missing_starts_over_offline_as_live(
    aihub2: Path, tmp_path: Path, fps: float | None, stride: int
) -> None:
    """The service forgets a person unseen for more than ``max_missing`` model frames; seen
    again, they start over (a full window before the next score, a new stride phase).
    Offline scores (``evaluate``, ``calibrate``, feedback) must score the same windows at
    the same frames, at the model's rate and at a camera's slower one."""
    from dataclasses import replace

    from detector.pose import PoseFrame, Track
    from forecasting.windows import score_hold
    from tests.conftest import tiny_checkpoint

    ck = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    clip = next(c for c in load_split(aihub2, "test") if len(c.tracks) >= 1)
    step = 1 if fps is None else round(ck.fps / fps)  # model frames per camera frame
    n = 400 // step
    tid, tr = max(clip.tracks.items(), key=lambda kv: int(kv[1].present[:400].sum()))
    keep = (tr.frames < 400) & (tr.frames % step == 0)
    at = tr.frames[keep]  # model frames (30 fps time)
    present = tr.present[keep].copy()
    present[((at >= 100) & (at < 170)) | ((at >= 250) & (at < 280))] = False  # 70 / 30 frames
    kp = tr.keypoints[keep].copy()
    kp[~present] = (np.nan, np.nan, 0.0)
    tr = Track(tid, at // step, kp, tr.scores[keep], present)
    clip.tracks = {tid: tr}
    clip.labels = None
    cfg = ScorerConfig(name="nll")
    offline = score_clip(ck.model, ck.window_config, clip, cfg, stride, (fps, ck.fps))
    seen = {int(f): bool(p) for f, p in zip(tr.frames, tr.present, strict=True)}
    rate = ck.fps if fps is None else fps
    by_index = {
        f.frame_index: replace(f, fps=fps)
        for f in frames_from_tracks(clip.tracks, "cam", (1920, 1080), rate)
    }
    empty = PoseFrame(camera="cam", frame_index=0, timestamp=0.0, image_size=(1920, 1080), persons=[], fps=fps)  # fmt: skip
    frames = [by_index.get(i) or replace(empty, frame_index=i, timestamp=i / rate) for i in range(n)]  # fmt: skip
    live = TrackScorer(ck, cfg, stride=stride, sigma=0)
    got: dict[int, float] = {}
    for i in range(0, n, 9):
        for s in live.step(frames[i : i + 9], forget=True)[0]:
            got[s.frame_index] = s.score
    per = offline.persons[tid][:n]
    held = np.full(n, np.nan)  # offline holds a score over the frames until the next
    for f, v in got.items():
        held[f : f + score_hold(stride, 1, fps, ck.fps)] = v
    assert np.array_equal(np.isfinite(held), np.isfinite(per)), np.flatnonzero(
        np.isfinite(held) != np.isfinite(per)
    )
    assert np.allclose(held[np.isfinite(per)], per[np.isfinite(per)], rtol=1e-4, atol=1e-4)
    span = ck.window_config.length  # model frames
    back = next(f for f in range(170 // step, n) if seen.get(f))  # seen again
    assert min(f for f in got if f >= back) * step >= back * step + span - 1  # a full window
    assert any(280 <= f * step < 280 + span - 1 for f in got)  # 30 frames: not forgotten
