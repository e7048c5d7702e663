"""`posewatch extract` on odd videos (issue 19, items 4 and 5): a header that over-states its
frame count, files truncated mid-way in several containers, implausible header frame rates,
and the command's exit status. Videos are re-encoded from the first frames of vtest.avi."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.extract import extract_video, track_video
from detector.posefiles import read_jsonl, read_stgnf
from detector.sources import FALLBACK_FPS, IncompleteVideoError, SourceError
from pipelines.cli import app
from tests.realworld import (
    OnePersonModel,
    decodable_frames,
    patch_avi,
    vtest_frames,
    write_video,
)


@pytest.fixture(scope="module")
def frames60(videos: Path) -> list:
    return vtest_frames(videos, 60)


def _overstated(tmp_path: Path, frames60: list, claimed: int = 70) -> Path:
    path = write_video(tmp_path / "over.avi", frames60, "MJPG")
    patch_avi(path, total=claimed)
    return path


def _cut(src: Path, dst: Path, share: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * share)])
    return dst


@pytest.mark.parametrize("claimed", [61, 70, 600])
def test_an_intact_video_whose_header_overstates_its_count_is_written_whole(
    tmp_path: Path, frames60: list, claimed: int, caplog: pytest.LogCaptureFixture
) -> None:
    video = _overstated(tmp_path, frames60, claimed)
    caplog.set_level(logging.WARNING)
    s = extract_video(OnePersonModel(), video, tmp_path / "out", progress=False)
    assert (s.frames, s.frames_claimed, s.incomplete) == (60, claimed, None)
    tracks = read_stgnf(s.out)
    assert sum(t.num_present for t in tracks.values()) == 60
    if claimed - 60 > 2:  # within 2 frames (or 1%) a count is only an estimate: no warning
        (msg,) = [r.getMessage() for r in caplog.records if "over-states" in r.getMessage()]
        assert f"read 60 frames of the {claimed} its header claims" in msg
        assert "its RIFF chunks end within the file" in msg


@pytest.mark.parametrize(
    ("name", "fourcc", "share"),
    [("cut.avi", "MJPG", 0.57), ("cut.avi", "MJPG", 0.3), ("cut.mkv", "MJPG", 0.57)],
)
def test_a_truncated_video_keeps_the_poses_of_every_decoded_frame(
    tmp_path: Path, frames60: list, name: str, fourcc: str, share: float
) -> None:
    whole = write_video(tmp_path / f"whole{Path(name).suffix}", frames60, fourcc)
    video = _cut(whole, tmp_path / name, share)
    n = decodable_frames(video)
    assert 0 < n < 60
    s = extract_video(OnePersonModel(), video, tmp_path / "out", fmt="jsonl", progress=False)
    assert s.frames == n and s.frames_claimed == 60
    assert s.incomplete is not None and str(video) in s.incomplete
    assert f"read {n} frames of the 60 its header claims" in s.incomplete
    assert "truncated" in s.incomplete
    assert [f.frame_index for f in read_jsonl(s.out)] == list(range(n))


@pytest.mark.parametrize(("name", "fourcc"), [("cut.ts", "mp4v"), ("cut.flv", "FLV1")])
def test_a_truncated_stream_container_is_incomplete_even_when_its_count_follows(
    tmp_path: Path, frames60: list, name: str, fourcc: str
) -> None:
    """MPEG-TS estimates its frame count from what is there: only the cut packet shows it."""
    whole = write_video(tmp_path / f"whole{Path(name).suffix}", frames60, fourcc)
    s = extract_video(OnePersonModel(), whole, tmp_path / "out", progress=False)
    assert (s.frames, s.incomplete) == (60, None)
    video = _cut(whole, tmp_path / name, 0.57)
    n = decodable_frames(video)
    s = extract_video(OnePersonModel(), video, tmp_path / "out", progress=False)
    assert s.frames == n and 0 < n < 60
    assert s.incomplete is not None and s.incomplete.endswith(
        "it ends inside a 188-byte packet: truncated"
        if name.endswith(".ts")
        else "its last tag is cut off: it is truncated"
    )


def test_track_video_raises_incomplete_after_the_frames(tmp_path: Path, frames60: list) -> None:
    whole = write_video(tmp_path / "whole.avi", frames60, "MJPG")
    video = _cut(whole, tmp_path / "cut.avi", 0.57)
    got = []
    with pytest.raises(IncompleteVideoError) as info:
        for pf in track_video(OnePersonModel(), video, batch_size=8):
            got.append(pf.frame_index)
    n = decodable_frames(video)
    assert got == list(range(n))
    assert (info.value.frames_read, info.value.frames_claimed) == (n, 60)


def test_an_mp4_cut_before_its_index_says_truncated_and_writes_nothing(
    tmp_path: Path, frames60: list
) -> None:
    whole = write_video(tmp_path / "whole.mp4", frames60, "mp4v")
    video = _cut(whole, tmp_path / "cut.mp4", 0.57)
    with pytest.raises(SourceError, match=r"cut\.mp4 \(the 'mdat' box .* it is truncated\)"):
        extract_video(OnePersonModel(), video, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_video_is_named_as_such(tmp_path: Path) -> None:
    notes = tmp_path / "notes.avi"
    notes.write_text("meeting notes, not a video\n" * 50)
    with pytest.raises(SourceError, match=r"notes\.avi \(not a video"):
        extract_video(OnePersonModel(), notes, tmp_path / "out", progress=False)
    with pytest.raises(SourceError, match=r"gone\.avi not found"):
        extract_video(OnePersonModel(), tmp_path / "gone.avi", tmp_path / "out", progress=False)


@pytest.mark.parametrize(("fps", "expected"), [(None, FALLBACK_FPS), (12.5, 12.5)])
def test_extract_fps_sets_the_timestamps_of_a_video_whose_header_rate_is_zero(
    tmp_path: Path, frames60: list, fps: float | None, expected: float
) -> None:
    video = write_video(tmp_path / "rate0.avi", frames60[:20], "MJPG")
    patch_avi(video, rate=(1, 0))
    s = extract_video(OnePersonModel(), video, tmp_path / "out", "jsonl", progress=False, fps=fps)
    stamps = [f.timestamp for f in read_jsonl(s.out)]
    assert stamps == pytest.approx([i / expected for i in range(20)])


def test_extract_exit_status_says_which_videos_were_incomplete(
    tmp_path: Path, frames60: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("detector.pose_model.PoseModel", OnePersonModel)
    good = write_video(tmp_path / "good.avi", frames60[:30], "MJPG")
    over = _overstated(tmp_path, frames60)
    cut = _cut(write_video(tmp_path / "w.avi", frames60, "MJPG"), tmp_path / "cut.avi", 0.57)
    out = tmp_path / "poses"
    runner = CliRunner()

    def extract(*videos: Path) -> tuple[int, str, str]:
        r = runner.invoke(app, ["extract", *map(str, videos), "--out", str(out)])
        return r.exit_code, r.stdout, r.stderr

    code, stdout, _ = extract(over, good)
    assert code == 0
    assert "over.avi: 60 frames (of the 70 its header claims)" in stdout
    assert (out / "over_alphapose_tracked_person.json").exists()
    assert (out / "good_alphapose_tracked_person.json").exists()
    code, stdout, stderr = extract(cut, good)
    assert code == 3
    n = decodable_frames(cut)
    assert f"warning: camera 'cut': video file {cut} is incomplete: read {n} frames" in stderr
    assert (
        sum(t.num_present for t in read_stgnf(out / "cut_alphapose_tracked_person.json").values())
        == n
    )
    code, _, stderr = extract(tmp_path / "missing.avi", cut, good)
    assert code == 1 and "missing.avi not found" in stderr
    r = runner.invoke(app, ["extract", str(good), "--fps", "0"])
    assert r.exit_code == 2
