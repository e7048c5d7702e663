"""A camera at another frame rate than the model's footage is scored on the model's time axis.

A model's windows are frames at its training rate (AIHub2: 30 fps). A 15 fps camera's frames
are placed two model frames apart (the gap between them interpolated, like any gap); a
60 fps camera's frames that fall on a model frame already taken are skipped. So a person
seen at 15 fps gets exactly the scores of the same person seen at 30 fps with every other
frame missing, and at 60 fps exactly those of 30 fps.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from detector.datasets import Clip, load_split
from detector.pose import PoseFrame, Track, frames_from_tracks
from detector.posefiles import PoseFileError, decode_poseframe
from forecasting.checkpoint import CheckpointError, load_checkpoint, update_checkpoint
from forecasting.scoring import ScorerConfig
from pipelines.clip_scoring import score_clip
from pipelines.track_scoring import TrackScorer
from tests.conftest import tiny_checkpoint

FRAMES = 400


@pytest.fixture(scope="module")
def clip(aihub2: Path) -> Clip:
    """The first frames of a real AIHub2 test clip."""
    c = next(c for c in load_split(aihub2, "test") if len(c.tracks) >= 2)
    tracks = {}
    for tid, tr in c.tracks.items():
        keep = tr.frames < FRAMES
        if keep.sum() > 30:
            tracks[tid] = Track(
                tid, tr.frames[keep], tr.keypoints[keep], tr.scores[keep], tr.present[keep]
            )
    return Clip(c.name, c.path, tracks, None)


@pytest.fixture(scope="module")
def ck(trained_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(trained_checkpoint)


def live_scores(ck, frames: list[PoseFrame]) -> tuple[dict[tuple[int, int], float], TrackScorer]:  # type: ignore[no-untyped-def]
    """(track, frame index) -> score of a live scorer fed ``frames`` in batches of 5."""
    scorer = TrackScorer(ck, ScorerConfig(name="nll"), stride=1, sigma=0)
    out = {}
    for i in range(0, len(frames), 5):
        for s in scorer.add(frames[i : i + 5]):
            out[(s.track_id, s.frame_index)] = s.score
    return out, scorer


@pytest.mark.slow
def test_a_15_fps_camera_scores_as_30_fps_with_every_other_frame_missing(clip: Clip, ck) -> None:  # type: ignore[no-untyped-def]
    assert ck.fps == 30.0  # a checkpoint that records no rate: AIHub2's
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))
    even = [f for f in frames if f.frame_index % 2 == 0]
    reference, _ = live_scores(ck, even)  # 30 fps, odd frames missing
    at15 = [replace(f, frame_index=f.frame_index // 2, timestamp=f.frame_index / 30, fps=15.0) for f in even]  # fmt: skip
    got, _ = live_scores(ck, at15)
    assert len(reference) > 150
    assert set(got) == {(t, f // 2) for t, f in reference}  # the camera's own frame index
    for (t, f), v in reference.items():
        assert got[(t, f // 2)] == pytest.approx(v, rel=1e-5, abs=1e-5)
    # Without the rate the same frames are read as 30 fps: twice the motion per frame.
    unplaced, _ = live_scores(ck, [replace(f, fps=None) for f in at15])
    diff = [abs(unplaced[k] - got[k]) for k in got if k in unplaced]
    assert np.median(diff) > 0.05 * np.median(np.abs(list(got.values())))

    # Offline (evaluate, calibrate) scores a 15 fps clip as the service does.
    tracks15 = {}
    for tid, tr in clip.tracks.items():
        keep = tr.frames % 2 == 0
        tracks15[tid] = Track(tid, tr.frames[keep] // 2, tr.keypoints[keep], tr.scores[keep], tr.present[keep])  # fmt: skip
    off = score_clip(ck.model, ck.window_config, Clip("c15", clip.path, tracks15, None),
                     ScorerConfig(name="nll"), rates=(15.0, 30.0))  # fmt: skip
    compared = 0
    for tid, per in off.persons.items():
        for f in np.flatnonzero(np.isfinite(per)):
            assert got[(tid, int(f))] == pytest.approx(per[f], rel=1e-4, abs=1e-4)
            compared += 1
    assert compared == len(got)


@pytest.mark.slow
def test_a_60_fps_camera_skips_the_frames_between_the_models_frames(clip: Clip, ck) -> None:  # type: ignore[no-untyped-def]
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))
    reference, _ = live_scores(ck, frames)
    at60 = []
    for f in frames:  # every frame twice (a camera twice as fast, standing-still poses)
        at60 += [replace(f, frame_index=2 * f.frame_index + k, fps=60.0) for k in (0, 1)]
    got, scorer = live_scores(ck, at60)
    assert set(got) == {(t, 2 * f) for t, f in reference}
    for (t, f), v in reference.items():
        assert got[(t, 2 * f)] == pytest.approx(v, rel=1e-5, abs=1e-5)
    persons = sum(len(f.persons) for f in frames)
    assert scorer.decimated == persons and scorer.duplicates == 0
    # a frame delivered twice is still a duplicate, not a skipped frame
    scorer.add([at60[-1]])
    assert scorer.duplicates == len(at60[-1].persons) and scorer.decimated == persons


def test_pose_messages_carry_the_cameras_rate_and_bad_rates_are_refused() -> None:
    pf = PoseFrame("gate", 3, 0.2, (640, 480), [], fps=15.0)
    assert PoseFrame.from_dict(pf.to_dict()).fps == 15.0
    assert "fps" not in replace(pf, fps=None).to_dict()  # as before: readers need not know it
    line = json.dumps(pf.to_dict())
    assert decode_poseframe(line).fps == 15.0
    for bad in (0, -30, 1e-300, 1e6, "30", True):
        with pytest.raises(PoseFileError, match="fps"):
            decode_poseframe(json.dumps({**pf.to_dict(), "fps": bad}))


def test_a_checkpoint_with_a_bad_frame_rate_is_refused(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "m.pt")
    update_checkpoint(path, fps=15.0)
    assert load_checkpoint(path).fps == 15.0
    for bad in (-1, 0, 1e-300, "fast", 1e9):
        update_checkpoint(path, fps=bad)
        with pytest.raises(CheckpointError, match="fps"):
            load_checkpoint(path)


def test_a_camera_too_slow_for_the_model_is_named_once_and_not_scored(
    clip: Clip, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ck = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    scorer = TrackScorer(ck, ScorerConfig(name="nll"), stride=1, sigma=0)
    assert scorer.slowest_fps == pytest.approx(30 / 9)  # 8 model frames at most in a gap
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))
    ok = [replace(f, camera="ok", fps=3.5) for f in frames[:40]]
    slow = [replace(f, camera="slow", fps=3.0) for f in frames[:40]]
    scored = scorer.add(ok + slow)
    assert {s.camera for s in scored} == {"ok"}
    warned = [r.getMessage() for r in caplog.records if "fps the model can score" in r.getMessage()]
    assert warned == [
        "camera slow: 3 fps is below the 3.33 fps the model can score (8 model frames at most "
        "between two frames); its persons are not scored. Raise the camera's frame rate"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("fps", "stride"), [(15.0, 3), (20.0, 2), (60.0, 3)])
def test_live_and_offline_score_the_same_frames_at_any_rate_and_stride(
    clip: Clip, ck, fps: float, stride: int
) -> None:  # type: ignore[no-untyped-def]
    """``evaluate`` / ``calibrate`` score the windows the service scores (the service's
    default stride is 3), and every frame between two scores holds the last one."""
    step = 30.0 / fps
    tracks = {}
    for tid, tr in clip.tracks.items():  # the clip resampled to ``fps`` (nearest frame)
        idx = np.arange(int(np.ceil(tr.frames[0] / step)), int(tr.frames[-1] / step) + 1)
        src = np.clip(np.round(idx * step).astype(int) - tr.frames[0], 0, len(tr.frames) - 1)
        tracks[tid] = Track(tid, idx, tr.keypoints[src], tr.scores[src], tr.present[src])
    resampled = Clip("c", clip.path, tracks, None)
    frames = [replace(f, fps=fps) for f in frames_from_tracks(tracks, "cam", (1920, 1080))]
    live = TrackScorer(ck, ScorerConfig(name="nll"), stride=stride, sigma=0)
    got = {(s.track_id, s.frame_index): s.score for s in live.add(frames)}
    off = score_clip(ck.model, ck.window_config, resampled, ScorerConfig(name="nll"), stride,
                     rates=(fps, 30.0))  # fmt: skip
    assert len(got) > 20
    for (tid, f), v in got.items():
        assert off.persons[tid][f] == pytest.approx(v, rel=1e-4, abs=1e-4)
    for tid, per in off.persons.items():
        scored = sorted(f for t, f in got if t == tid)
        held = per[scored[0] : scored[-1] + 1]
        assert np.isfinite(held).all()  # no hole between two scores of a person in view
        assert np.isfinite(per).sum() - len(scored) <= len(scored) * (stride * fps / 30 + 1)


def test_a_camera_whose_rate_becomes_known_starts_its_tracks_over(
    clip: Clip, tmp_path: Path
) -> None:
    """A stream that states no rate, then (reconnected) 15 fps: its old frames sit on
    another time axis, so its tracks start over and its persons are reported lost once."""
    ck = load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"))
    scorer = TrackScorer(ck, ScorerConfig(name="nll"), stride=1, sigma=0)
    frames = frames_from_tracks(clip.tracks, "cam", (1920, 1080))[:120]
    before, after = frames[:60], [replace(f, fps=15.0) for f in frames[60:]]
    _, lost_before = scorer.step(before, forget=True)
    assert not any(lost_before) and scorer.rate_changes == 0
    _, lost = scorer.step(after, forget=True)
    present = {p.track_id for p in frames[59].persons}
    assert present and set(lost[0]) >= present and not any(lost[1:])
    assert scorer.rate_changes == 1 and scorer.restarts == 0
    scorer.step([replace(f, frame_index=f.frame_index + 200) for f in after], forget=True)
    assert scorer.rate_changes == 1  # the same rate again: nothing starts over
