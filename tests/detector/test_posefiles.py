import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.pose import Person, PoseFrame, Track
from detector.posefiles import (
    PoseFileError,
    iter_jsonl,
    read_jsonl,
    read_stgnf,
    write_jsonl,
    write_stgnf,
)
from tests.conftest import random_keypoints


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
            (768, 576),
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
    fr = PoseFrame("c", 0, 0.0, (10, 10), [Person(1, np.zeros(4), 1, random_keypoints(rng, 1)[0])])
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
