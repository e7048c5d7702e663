import numpy as np
import pytest

from detector.pose import (
    Person,
    PoseFrame,
    Track,
    frames_from_tracks,
    mark_missing,
    tracks_from_frames,
    zero_missing,
)
from tests.conftest import random_keypoints


def test_zero_keypoints_are_missing_not_the_image_corner() -> None:
    kp = np.ones((17, 3), np.float32)
    kp[3] = (0, 0, 0.4)
    kp[4] = (0, 5, 0.4)  # x == 0 alone is a real coordinate
    out = mark_missing(kp)
    assert np.isnan(out[3, :2]).all() and out[3, 2] == 0
    assert out[4].tolist() == [0, 5, pytest.approx(0.4)]
    assert np.isfinite(out[[0, 1, 2, 4]]).all()
    assert zero_missing(out)[3].tolist() == [0, 0, 0]


def test_person_validates_shapes() -> None:
    with pytest.raises(ValueError, match=r"keypoints must have shape \(17, 3\)"):
        Person(track_id=1, bbox=np.zeros(4), score=1.0, keypoints=np.zeros((16, 3)))
    with pytest.raises(ValueError, match="bbox must have 4 values"):
        Person(track_id=1, bbox=np.zeros(3), score=1.0, keypoints=np.zeros((17, 3)))


def test_track_marks_missing_frames_explicitly() -> None:
    rng = np.random.default_rng(0)
    kp = random_keypoints(rng, 3)
    tr = Track.from_rows(7, {10: (kp[0], 0.9), 11: (kp[1], 0.8), 14: (kp[2], 0.7)})
    assert tr.frames.tolist() == [10, 11, 12, 13, 14]
    assert tr.present.tolist() == [True, True, False, False, True]
    assert np.isnan(tr.keypoints[2:4, :, :2]).all() and (tr.keypoints[2:4, :, 2] == 0).all()
    assert np.isnan(tr.scores[2:4]).all()
    assert tr.num_present == 3
    assert tr.visible.shape == (5, 17)
    assert tr.visible[2:4].sum() == 0
    np.testing.assert_array_equal(tr.keypoints[4], kp[2])


def test_frames_tracks_round_trip() -> None:
    rng = np.random.default_rng(1)
    frames = []
    for f in range(20):
        persons = [
            Person(tid, np.array([0, 0, 10, 10]), 0.5 + tid / 10, random_keypoints(rng, 1)[0])
            for tid in (1, 2)
            if not (tid == 2 and 5 <= f < 8)
        ]
        frames.append(PoseFrame("cam", f, f / 30, (1920, 1080), persons))
    tracks = tracks_from_frames(frames)
    assert sorted(tracks) == [1, 2]
    assert tracks[2].present.sum() == 17 and len(tracks[2]) == 20
    back = frames_from_tracks(tracks, "cam", (1920, 1080))
    assert [f.frame_index for f in back] == list(range(20))
    for a, b in zip(frames, back, strict=True):
        assert len(a.persons) == len(b.persons)
        for pa, pb in zip(a.persons, b.persons, strict=True):
            np.testing.assert_array_equal(pa.keypoints, pb.keypoints)


def test_poseframe_dict_round_trip() -> None:
    rng = np.random.default_rng(2)
    p = Person(4, np.array([1, 2, 3, 4]), 0.75, random_keypoints(rng, 1)[0])
    fr = PoseFrame("gate", 12, 1.5, (640, 480), [p])
    d = fr.to_dict()
    assert d["schema_version"] == 1
    back = PoseFrame.from_dict(d)
    np.testing.assert_array_equal(back.persons[0].keypoints, p.keypoints)
    assert back.image_size == (640, 480) and back.camera == "gate"
