import gzip
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.pose import (
    MAX_TRACK_FRAMES,
    Person,
    PoseFrame,
    Track,
    frames_from_tracks,
    zero_missing,
)
from detector.posefiles import (
    PoseFileError,
    decode_poseframe,
    iter_jsonl,
    read_jsonl,
    read_stgnf,
    write_jsonl,
    write_stgnf,
)
from tests.conftest import random_keypoints
from tests.realworld import clip_piece, write_dataset


def _tracks(seed: int, n_tracks: int = 3) -> dict[int, Track]:
    rng = np.random.default_rng(seed)
    out = {}
    for tid in range(1, n_tracks + 1):
        frames = sorted(rng.choice(200, size=int(rng.integers(1, 60)), replace=False).tolist())
        kp = random_keypoints(rng, len(frames))
        rows = {f: (kp[i], float(rng.uniform(0, 3))) for i, f in enumerate(frames)}
        out[tid] = Track.from_rows(tid, rows)
    return out


def _assert_tracks_equal(a: dict[int, Track], b: dict[int, Track]) -> None:
    assert sorted(a) == sorted(b)
    for tid in a:
        np.testing.assert_array_equal(a[tid].frames, b[tid].frames)
        np.testing.assert_array_equal(a[tid].present, b[tid].present)
        np.testing.assert_array_equal(a[tid].keypoints, b[tid].keypoints)  # NaN == NaN here
        np.testing.assert_array_equal(a[tid].scores, b[tid].scores)


@pytest.mark.parametrize("name", ["clip.json", "clip.json.gz"])
def test_stgnf_round_trip(tmp_path: Path, name: str) -> None:
    tracks = _tracks(0)
    write_stgnf(tmp_path / name, tracks)
    _assert_tracks_equal(tracks, read_stgnf(tmp_path / name))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 4))
def test_stgnf_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, seed: int, n: int
) -> None:
    path = tmp_path_factory.mktemp("rt") / "c.json"
    tracks = _tracks(seed, n)
    write_stgnf(path, tracks)
    _assert_tracks_equal(tracks, read_stgnf(path))


def test_stgnf_layout_is_the_interchange_format(tmp_path: Path) -> None:
    kp = np.arange(51, dtype=np.float32).reshape(17, 3) + 1
    write_stgnf(tmp_path / "c.json", {5: Track.from_rows(5, {3: (kp, 2.5)})})
    data = json.loads((tmp_path / "c.json").read_text())
    assert list(data) == ["5"] and list(data["5"]) == ["0003"]
    assert data["5"]["0003"]["keypoints"] == [float(v) for v in kp.reshape(-1)]
    assert data["5"]["0003"]["scores"] == 2.5


@pytest.mark.parametrize("name", ["poses.jsonl", "poses.jsonl.gz"])
def test_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(3)
    frames = [
        PoseFrame(
            "cam-a",
            i,
            1000.0 + i / 10,
            (1920, 1080),
            [
                Person(t, rng.uniform(0, 500, 4), 0.9, random_keypoints(rng, 1)[0])
                for t in range(i % 3)
            ],
        )
        for i in range(30)
    ]
    assert write_jsonl(tmp_path / name, frames) == 30
    back = read_jsonl(tmp_path / name)
    assert len(back) == 30
    for a, b in zip(frames, back, strict=True):
        assert (a.camera, a.frame_index, a.timestamp, a.image_size) == (
            b.camera,
            b.frame_index,
            b.timestamp,
            b.image_size,
        )
        for pa, pb in zip(a.persons, b.persons, strict=True):
            np.testing.assert_array_equal(pa.keypoints, pb.keypoints)
            np.testing.assert_array_equal(pa.bbox, pb.bbox)


GOOD = {"keypoints": [1.0] * 51, "scores": 1.0}


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "file is empty"),
        ("   \n", "file is empty"),
        ('{"1": {"0000": {"keypoints": [1, 2', "invalid JSON at line 1"),
        ("[1, 2]", "top level must be an object of persons"),
        (json.dumps({"bob": {"0000": GOOD}}), "person 'bob': person id is not an integer"),
        (json.dumps({"1": []}), "person '1': expected an object of frames"),
        (json.dumps({"1": {}}), "person '1': person has no frames"),
        (json.dumps({"1": {"x1": GOOD}}), "person '1', frame 'x1': frame index is not an integer"),
        (json.dumps({"1": {"-3": GOOD}}), "frame '-3': frame index is negative"),
        (json.dumps({"1": {"0001": 5}}), "frame '0001': expected an object, got int"),
        (json.dumps({"1": {"0001": {"scores": 1}}}), "frame '0001': missing 'keypoints'"),
        (
            json.dumps({"1": {"0002": {"keypoints": [1.0] * 50, "scores": 1}}}),
            "person '1', frame '0002': 'keypoints' must be a list of 51 numbers.*got 50",
        ),
        (
            json.dumps({"1": {"0002": {"keypoints": ["a"] * 51, "scores": 1}}}),
            "'keypoints' holds a non-number",
        ),
        ('{"1": {"0002": {"keypoints": [NaN' + ", 1" * 50 + '], "scores": 1}}}', "NaN or infinity"),
        (json.dumps({"1": {"0002": {"keypoints": [1.0] * 51}}}), "missing 'scores'"),
        (
            json.dumps({"1": {"0002": {"keypoints": [1.0] * 51, "scores": "high"}}}),
            "'scores' must be a finite number",
        ),
        (json.dumps({"1": {"2": GOOD, "0002": GOOD}}), "frame '0002': frame index appears twice"),
        (
            json.dumps({"1": {"0003": {"keypoints": [1e300] + [1.0] * 50, "scores": 1}}}),
            "frame '0003': 'keypoints' holds the coordinate 1e\\+300, beyond",
        ),
    ],
)
def test_stgnf_malformed_inputs_name_file_person_frame(
    tmp_path: Path, content: str, pattern: str
) -> None:
    path = tmp_path / "bad_clip.json"
    path.write_text(content)
    with pytest.raises(PoseFileError, match=pattern) as info:
        read_stgnf(path)
    assert str(path) in str(info.value)


def test_stgnf_missing_and_truncated_gzip(tmp_path: Path) -> None:
    with pytest.raises(PoseFileError, match="does not exist"):
        read_stgnf(tmp_path / "nope.json")
    good = tmp_path / "c.json.gz"
    write_stgnf(good, _tracks(4))
    raw = good.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PoseFileError, match=r"cut\.json\.gz.*(truncated|invalid JSON)"):
        read_stgnf(cut)


def test_jsonl_errors_name_line_person_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    kp = random_keypoints(rng, 1)[0]
    fr = PoseFrame("c", 0, 0.0, (1920, 1080), [Person(1, np.zeros(4), 1, kp)])
    line = json.dumps(fr.to_dict())
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(PoseFileError, match="file is empty"):
        read_jsonl(empty)
    trunc = tmp_path / "t.jsonl"
    trunc.write_text(line + "\n" + line[: len(line) // 2])
    with pytest.raises(PoseFileError, match=r"t\.jsonl, line 2: invalid JSON"):
        read_jsonl(trunc)
    bad = fr.to_dict()
    bad["frame_index"] = 9
    bad["persons"][0]["keypoints"] = bad["persons"][0]["keypoints"][:16]
    badf = tmp_path / "b.jsonl"
    badf.write_text(line + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(PoseFileError, match=r"line 2, person '1', frame '9': keypoints must be 17"):
        read_jsonl(badf)
    nocam = fr.to_dict()
    del nocam["camera"]
    badc = tmp_path / "c.jsonl"
    badc.write_text(json.dumps(nocam) + "\n")
    with pytest.raises(PoseFileError, match="line 1, frame '0': missing 'camera'"):
        list(iter_jsonl(badc))
    gz = tmp_path / "g.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(line + "\n")
    assert len(read_jsonl(gz)) == 1


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("camera", "../../etc/x", "camera name '../../etc/x' is not valid"),
        ("camera", "..", "camera name '..' is not valid"),
        ("camera", "a" * 65, "is not valid"),
        ("camera", "", "is not valid"),
        ("image_size", [100000, 100000], r"image_size \(100000, 100000\) outside 1..16384"),
        ("image_size", [0, 720], r"outside 1..16384"),
        ("image_size", [-5, 720], r"outside 1..16384"),
    ],
)
def test_a_pose_message_with_an_unsafe_camera_name_or_image_size_is_rejected(
    field: str, value: object, why: str
) -> None:
    """Names become file names (snapshots, video) and image sizes canvas allocations."""
    from detector.pose import Person, PoseFrame
    from detector.posefiles import decode_poseframe

    kp = np.ones((17, 3), np.float32)
    ok = PoseFrame("gate", 3, 0.3, (1280, 720), [Person(1, np.ones(4, np.float32), 0.9, kp)])
    assert decode_poseframe(json.dumps(ok.to_dict())).camera == "gate"
    bad = {**ok.to_dict(), field: value}
    with pytest.raises(PoseFileError, match=why):
        decode_poseframe(json.dumps(bad).encode(), "poses[0]@7")


# -- issue 17 item 4: a pose message is validated field by field --------------------------------


def _message(**person: object) -> dict:
    kp = np.full((17, 3), 0.5, np.float32)
    kp[:, 0] = np.linspace(100, 1100, 17)
    kp[:, 1] = np.linspace(50, 650, 17)
    ok = PoseFrame("gate", 3, 0.3, (1280, 720), [Person(9, np.array([90, 40, 1110, 660]), 0.9, kp)])
    d = ok.to_dict()
    d["persons"][0].update(person)
    return d


def _kp(j: int, x: float, y: float, c: float = 0.5) -> list:
    kp = _message()["persons"][0]["keypoints"]
    kp[j] = [x, y, c]
    return kp


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ({"frame_index": -5}, r"frame_index -5 is not an integer in 0 \.\. 999,999,999,999"),
        ({"frame_index": 10**30}, r"frame_index 1000000000000000000000000000000 is not an integer"),
        ({"frame_index": 10**12}, r"frame_index 1000000000000 is not an integer"),
        ({"frame_index": 3.5}, "frame_index 3.5 is not an integer"),
        ({"frame_index": True}, "frame_index True is not an integer"),
        ({"timestamp": float("nan")}, r"timestamp nan is not a finite number >= 0 \(seconds\)"),
        ({"timestamp": float("inf")}, "timestamp inf is not a finite number"),
        ({"timestamp": -1.0}, "timestamp -1.0 is not a finite number >= 0"),
        ({"timestamp": "noon"}, "timestamp noon is not a finite number"),
        ({"camera": "x" * 10_000}, "camera name 'xxxx.* is not valid"),
        ({"camera": 7}, "camera name 7 is not valid"),
        ({"image_size": [1e400, 720]}, r"image_size \(inf, 720\) outside 1..16384"),
        ({"image_size": [1280.5, 720]}, "outside 1..16384"),
    ],
)
def test_a_pose_message_with_a_bad_frame_field_names_it(frame: dict, why: str) -> None:
    raw = json.dumps({**_message(), **frame})
    with pytest.raises(PoseFileError, match=why) as info:
        decode_poseframe(raw, "poses[2]@41")
    assert str(info.value).startswith("poses[2]@41")


@pytest.mark.parametrize(
    ("person", "why"),
    [
        (
            {"keypoints": _kp(4, 1e39, 100)},
            r"keypoint 4 at \[1e\+39, 100.0\] is not finite or lies outside x -1280 .. 2560, y -720 .. 1440",
        ),
        ({"keypoints": _kp(4, float("inf"), 100)}, r"keypoint 4 at \[inf, 100.0\] is not finite"),
        ({"keypoints": _kp(4, float("nan"), 100)}, r"keypoint 4 at \[nan, 100.0\] is not finite"),
        (
            {"keypoints": _kp(0, 2561, 100)},
            r"keypoint 0 at \[2561.0, 100.0\] .* outside x -1280 .. 2560",
        ),
        ({"keypoints": _kp(0, 10, -721)}, r"keypoint 0 at \[10.0, -721.0\] .* y -720 .. 1440"),
        ({"keypoints": _kp(16, 10, 10, 1.7)}, r"keypoint 16 confidence 1.7 is outside 0 .. 1.5"),
        ({"keypoints": _kp(16, 10, 10, -0.1)}, r"keypoint 16 confidence -0.1 is outside 0 .. 1.5"),
        ({"keypoints": _kp(16, 10, 10, float("nan"))}, r"keypoint 16 confidence nan is outside"),
        ({"keypoints": [[1, 2, 3]] * 17 + [[1, 2]]}, "keypoints must be 17 x"),
        (
            {"bbox": [0, 0, float("nan"), 5]},
            r"bbox at \[\[0.0, 0.0\], \[nan, 5.0\]\] is not finite",
        ),
        ({"bbox": [0, 0, 1e30, 5]}, r"bbox at .* outside x -1280 .. 2560"),
        ({"bbox": [1, 2, 3]}, "bbox must have 4 numbers"),
        (
            {"track_id": 10**30},
            r"track_id 1000000000000000000000000000000 is not an integer in -1 .. 9007199254740991",
        ),
        ({"track_id": -2}, "track_id -2 is not an integer"),
        ({"score": float("nan")}, "score nan is not a finite number"),
    ],
)
def test_a_pose_message_with_a_bad_person_names_the_field_and_value(person: dict, why: str) -> None:
    raw = json.dumps(_message(**person))
    with pytest.raises(PoseFileError, match=why) as info:
        decode_poseframe(raw, "poses[0]@7")
    assert "person '" in str(info.value) and "frame '3'" in str(info.value)


def test_missing_keypoints_and_the_edges_of_the_range_are_accepted() -> None:
    kp = _kp(0, float("nan"), float("nan"), 0.0)  # missing, as NaN
    kp[1] = [0, 0, 0]  # missing, as files write it
    kp[2] = [0, 0, 0.3]  # Ultralytics zeroes unseen points and keeps the confidence
    kp[3] = [-1280, 1440, 1.5]  # the corners of the allowed range
    kp[4] = [2560, -720, 0.0]
    pf = decode_poseframe(json.dumps({**_message(keypoints=kp), "frame_index": 10**12 - 1}))
    p = pf.persons[0]
    assert int(p.visible.sum()) == 14 and pf.frame_index == 999_999_999_999
    assert np.isnan(p.keypoints[:3, :2]).all() and (p.keypoints[:3, 2] == 0).all()
    assert p.keypoints[3].tolist() == [-1280.0, 1440.0, 1.5]


def test_a_number_too_long_for_python_is_a_pose_file_error(tmp_path: Path) -> None:
    raw = json.dumps(_message()).replace('"frame_index": 3', '"frame_index": 1' + "0" * 5000)
    with pytest.raises(PoseFileError, match=r"invalid JSON .*4300"):
        decode_poseframe(raw)
    path = tmp_path / "long.json"
    path.write_text('{"1": {"1' + "0" * 5000 + '": ' + json.dumps(GOOD) + "}}")
    with pytest.raises(PoseFileError) as info:
        read_stgnf(path)
    assert str(info.value) == (
        f"{path}, person '1', frame '1000000000000000000000000000000000000000'... (5,001 "
        "characters): frame key '1000000000000000000000000000000000000000'... (5,001 "
        "characters) is not a frame index: the keys of a person must be the clip's frame "
        "numbers, 0 to 9,999,999; renumber the frames from 0"
    )


def test_frames_from_tracks_write_messages_that_decode() -> None:
    """A present frame whose keypoints are all missing gets a (0, 0, 0, 0) box, not NaN."""
    kp = np.zeros((17, 3), np.float32)
    seen = np.full((17, 3), 10, np.float32)
    seen[:, 2] = 0.5
    tracks = {4: Track.from_rows(4, {0: (kp, 0.5), 1: (seen, 0.5)})}
    frames = frames_from_tracks(tracks, "gate", (640, 480))
    back = [decode_poseframe(json.dumps(f.to_dict())) for f in frames]
    assert [p.bbox.tolist() for f in back for p in f.persons] == [[0, 0, 0, 0], [10, 10, 10, 10]]


# -- issue 19 item 1: a frame key that is not a frame number ------------------------------------


def _real_piece(aihub2: Path, tmp_path: Path, n: int = 50) -> tuple[Path, dict]:
    _, tracks, _ = clip_piece(aihub2, "test", 0, 0, n)
    path = tmp_path / "clip.json"
    write_stgnf(path, tracks)
    return path, json.loads(path.read_text())


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (
            "1700000000000",
            r"frame key '1700000000000' is not a frame index \(it looks like an epoch time in milliseconds\)",
        ),
        (
            "1700000000",
            r"frame key '1700000000' is not a frame index \(it looks like an epoch time in seconds\)",
        ),
        ("1700000000000000", r"\(it looks like an epoch time in microseconds\)"),
        (
            "10000000",
            r"frame key '10000000' is not a frame index: the keys of a person must be the clip's frame numbers, 0 to 9,999,999",
        ),
    ],
)
def test_a_frame_key_that_is_not_a_frame_number_names_file_person_and_key(
    aihub2: Path, tmp_path: Path, key: str, why: str
) -> None:
    path, data = _real_piece(aihub2, tmp_path)
    person = next(iter(data))
    data[person][key] = data[person]["0003"]
    path.write_text(json.dumps(data))
    tracemalloc.start()
    with pytest.raises(PoseFileError, match=why) as info:
        read_stgnf(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(info.value).startswith(f"{path}, person '{person}', frame '{key}': ")
    assert peak < 20 * 2**20  # nothing allocated in proportion to the key


def test_a_track_spanning_more_than_the_limit_is_refused(aihub2: Path, tmp_path: Path) -> None:
    path, data = _real_piece(aihub2, tmp_path)
    person = next(iter(data))
    data[person]["1000000"] = data[person]["0003"]  # frames 0 .. 1,000,000: one too many
    path.write_text(json.dumps(data))
    with pytest.raises(
        PoseFileError,
        match=rf"person '{person}': track {person} spans frames 0 to 1000000 \(1,000,001 frames\); "
        "a track may span at most 1,000,000 frames",
    ):
        read_stgnf(path)
    with pytest.raises(ValueError, match="spans frames 5 to 1000005"):
        Track.from_rows(
            1, {5: (np.ones((17, 3)), 1.0), MAX_TRACK_FRAMES + 5: (np.ones((17, 3)), 1.0)}
        )


def test_data_summary_reports_the_bad_key_instead_of_running_out_of_memory(
    aihub2: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    name, tracks, labels = clip_piece(aihub2, "test", 0, 0, 600)
    root = write_dataset(tmp_path / "ds", "test", {name: (tracks, labels)})
    path = root / "pose" / "test" / f"{name}_alphapose_tracked_person.json"
    data = json.loads(path.read_text())
    person = next(iter(data))
    data[person]["1700000000000"] = data[person]["0100"]
    path.write_text(json.dumps(data))
    r = CliRunner().invoke(app, ["data", "summary", str(root)])
    assert r.exit_code == 1
    assert (
        f"person '{person}', frame '1700000000000': frame key '1700000000000' is not a frame index"
        in r.stderr
    )


# -- issue 19 item 6: raw AlphaPose output where tracked poses are expected ---------------------


def _alphapose_list(aihub2: Path, tracked: bool) -> list:
    _, tracks, _ = clip_piece(aihub2, "test", 0, 0, 20)
    dets = []
    for tid, tr in tracks.items():
        for f, (kp, score) in tr.rows().items():
            d = {
                "image_id": f"{f}.jpg",
                "category_id": 1,
                "keypoints": zero_missing(kp).reshape(-1).tolist(),
                "score": score,
                "box": [0.0, 0.0, 10.0, 10.0],
            }
            if tracked:
                d["idx"] = tid
            dets.append(d)
    return dets


def test_raw_alphapose_output_is_recognised_and_the_error_says_what_to_do(
    aihub2: Path, tmp_path: Path
) -> None:
    path = tmp_path / "alphapose-results.json"
    dets = _alphapose_list(aihub2, tracked=False)
    path.write_text(json.dumps(dets))
    with pytest.raises(PoseFileError) as info:
        read_stgnf(path)
    assert str(info.value) == (
        f"{path}: top level must be an object of persons, got list: this is AlphaPose's raw, "
        f"untracked output ({len(dets)} detections with image_id and 17 keypoints, as a list): "
        "nothing says which detections are the same person; posewatch needs tracked poses "
        "(one object per person, frames as keys): run `posewatch extract VIDEO` on the video, "
        "which detects and tracks the people and writes this layout"
    )
    path.write_text(json.dumps(_alphapose_list(aihub2, tracked=True)))
    with pytest.raises(
        PoseFileError,
        match=r"AlphaPose's raw output tracked by PoseFlow .*regroup it per person \(idx\)",
    ):
        read_stgnf(path)
    path.write_text(json.dumps({"images": [], "annotations": dets}))
    with pytest.raises(
        PoseFileError, match=rf"got dict: this is a COCO keypoint file \({len(dets)} annotations"
    ):
        read_stgnf(path)
    frames = [PoseFrame("c", i, i / 10, (1920, 1080)).to_dict() for i in range(3)]
    path.write_text(json.dumps(frames))
    with pytest.raises(
        PoseFileError, match=r"a JSON list of 3 PoseFrames; write them one per line as JSON lines"
    ):
        read_stgnf(path)
