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
from forecasting.frame_scores import smooth
from forecasting.scoring import ScorerConfig
from forecasting.windows import model_frames
from pipelines.alerts import AlertLifecycle
from pipelines.clip_scoring import score_clip
from pipelines.feedback import episode_peak
from pipelines.sinks.base import FrameView
from pipelines.sinks.store import AlertStore, StoreSink
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
    # 2.5 fps: 12 model frames apart, so a window's last observed frame can be a real one
    slower = [replace(f, camera="slower", fps=2.5) for f in frames[:40]]
    scored = scorer.add(ok + slow + slower)
    assert {s.camera for s in scored} == {"ok"}
    warned = [r.getMessage() for r in caplog.records if "fps the model can score" in r.getMessage()]
    assert warned == [
        "camera slow: 3 fps is below the 3.33 fps the model can score (8 model frames at most "
        "between two frames); its persons are not scored. Raise the camera's frame rate",
        "camera slower: 2.5 fps is below the 3.33 fps the model can score (8 model frames at "
        "most between two frames); its persons are not scored. Raise the camera's frame rate",
    ]
    one = Clip("c", clip.path, dict(list(clip.tracks.items())[:1]), None)
    with pytest.raises(ValueError, match=r"c: 2.5 fps is below the 3.33 fps a model of 30 fps"):
        score_clip(ck.model, ck.window_config, one, ScorerConfig(name="nll"), 1, (2.5, 30.0))


@pytest.mark.slow
@pytest.mark.parametrize(("fps", "stride"), [(15.0, 3), (20.0, 2), (60.0, 3)])
def test_live_and_offline_score_the_same_frames_at_any_rate_and_stride(
    clip: Clip, ck, fps: float, stride: int
) -> None:  # type: ignore[no-untyped-def]
    """``evaluate`` / ``calibrate`` score the windows the service scores (the service's
    default stride is 3), every frame between two scores holds the last one, and the
    service's smoothing (6 frames) gives each person what smoothing those frames gives."""
    step = 30.0 / fps
    tracks = {}
    for tid, tr in clip.tracks.items():  # the clip resampled to ``fps`` (nearest frame)
        idx = np.arange(int(np.ceil(tr.frames[0] / step)), int(tr.frames[-1] / step) + 1)
        src = np.clip(np.round(idx * step).astype(int) - tr.frames[0], 0, len(tr.frames) - 1)
        tracks[tid] = Track(tid, idx, tr.keypoints[src], tr.scores[src], tr.present[src])
    resampled = Clip("c", clip.path, tracks, None)
    frames = [replace(f, fps=fps) for f in frames_from_tracks(tracks, "cam", (1920, 1080))]
    live = TrackScorer(ck, ScorerConfig(name="nll"), stride=stride, sigma=6.0)
    out = live.add(frames)
    got = {(s.track_id, s.frame_index): s.score for s in out}
    smoothed = {(s.track_id, s.frame_index): s.smoothed for s in out}
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
        # live smoothing counts frames, as offline smoothing of the held scores does
        held_run = np.isfinite(per[scored[0] :])
        end = scored[0] + (len(held_run) if held_run.all() else int(np.argmin(held_run)))
        series = smooth(per[scored[0] : end], 6.0, True)
        for f in (f for f in scored if f < end):
            assert smoothed[(tid, f)] == pytest.approx(series[f - scored[0]], rel=1e-4, abs=1e-4)


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


def test_a_verdicts_episode_is_rescored_as_the_live_scorer_placed_its_frames(
    clip: Clip, ck, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Feedback re-scores an episode of a 12 fps camera (model frames 2.5 apart, so where a
    frame lands depends on its index in the stream, not only in the episode) with exactly
    the live scorer's scores: placed by the rate the frames stated, stored with the poses,
    whatever their times say (the stream stalls 2 s mid-episode)."""
    tr = max(clip.tracks.values(), key=lambda t: len(t.frames))
    n_frames = int(len(tr.frames) / 2.5)
    src = np.round(np.arange(n_frames) * 2.5).astype(int)  # 12 fps: every 2.5th frame
    at = 1001 + np.arange(n_frames)  # the stream's frame indices (odd: not a multiple of 2)
    track = Track(7, at, tr.keypoints[src], tr.scores[src], tr.present[src])
    frames = [replace(f, fps=12.0) for f in frames_from_tracks({7: track}, "cam", (1920, 1080))]
    live, _ = live_scores(ck, frames)
    life = AlertLifecycle("cam", threshold=1.0, min_duration_s=0.2, update_interval_s=1.0)
    sink = StoreSink(tmp_path / "alerts.db")
    aid = ""
    for n, f in enumerate(frames):
        ts = n / 12.0 + (2.0 if n >= len(frames) // 2 else 0.0)
        view = FrameView("cam", f.frame_index, ts, (1920, 1080), f.persons, stated_fps=12.0)
        p = f.persons[0]
        score = 2.0 if 60 <= n < len(frames) - 10 else 0.1
        for a in life.update(7, ts, f.frame_index, score, p.bbox.tolist(), p.keypoints):
            sink.publish(a, view)
            aid = a.alert_id
        sink.frame(view)
    sink.close()
    db = AlertStore(tmp_path / "alerts.db")
    rows = db.poses(aid) or []
    db.close()
    assert len(rows) > 80 and {len(r) for r in rows} == {58} and {r[57] for r in rows} == {12.0}

    sc = ScorerConfig(name="nll")
    start = model_frames(int(rows[0][0]), 12.0, 30.0)
    span = ck.window_config.length - 1  # live windows whose frames all lie in the episode's
    want = max(v for (_, f), v in live.items() if model_frames(f, 12.0, 30.0) - start >= span)
    assert episode_peak(ck, sc, rows, 0.0, 1) == pytest.approx(want, rel=1e-4, abs=1e-4)
    unstated = episode_peak(ck, sc, [r[:57] for r in rows], 0.0, 1)  # an older store's rows
    assert unstated is not None and abs(unstated - want) > 0.05  # the rate matters
    slow = episode_peak(ck, sc, [[*r[:57], 2.0] for r in rows], 6.0, 1)
    broken = episode_peak(ck, sc, [*rows[:-1], [*rows[-1][:6], "x", *rows[-1][7:]]], 6.0, 1)
    assert slow is None and broken is None  # never scored live; malformed: no poses
