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
