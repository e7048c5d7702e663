"""The detect stage without YOLO: hand-made detections through the real per-camera trackers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from ultralytics.engine.results import Boxes

from detector.extract import track_video
from detector.pose import PoseFrame
from detector.pose_model import BACKENDS, Detections
from detector.sources import Frame, SourceError
from detector.stage import DetectedFrame, DetectStage, inside_roi
from detector.tracking import TRACKERS, CameraTracker

W, H = 640, 480


def detections(boxes: Sequence[Sequence[float]], size: tuple[int, int] = (W, H)) -> Detections:
    """Detections as :class:`PoseModel` makes them: score 0.9, keypoints spread in each box,
    ``raw`` the numpy Ultralytics ``Boxes`` (``x1, y1, x2, y2, conf, cls``) trackers consume."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(b)
    scores = np.full(n, 0.9, np.float32)
    t = np.linspace(0, 1, 17, dtype=np.float32)
    kp = np.empty((n, 17, 3), np.float32)
    kp[..., 0] = b[:, None, 0] + t * (b[:, None, 2] - b[:, None, 0])
    kp[..., 1] = b[:, None, 1] + t * (b[:, None, 3] - b[:, None, 1])
    kp[..., 2] = 0.8
    data = np.concatenate([b, scores[:, None], np.zeros((n, 1), np.float32)], axis=1)
    raw = Boxes(data, orig_shape=(size[1], size[0]))
    return Detections(boxes=b, scores=scores, keypoints=kp, raw=raw, image_size=size)


class ScriptedPredictor:
    """Returns the detections scripted for each image (by identity); sleeps ``delay`` s a call."""

    def __init__(self, delay: float = 0.0):
        self.script: dict[int, Detections] = {}
        self.delay = delay
        self.calls: list[int] = []  # batch lengths

    def frame(self, camera: str, index: int, boxes: Sequence[Sequence[float]]) -> Frame:
        image = np.zeros((H, W, 3), np.uint8)
        self.script[id(image)] = detections(boxes)
        return Frame(camera, index, index / 25, image)

    def predict(self, frames: Sequence[np.ndarray], /) -> list[Detections]:
        self.calls.append(len(frames))
        if self.delay:
            time.sleep(self.delay)
        return [self.script[id(f)] for f in frames]


def walkers(index: int, starts: Sequence[tuple[float, float]], step: tuple[float, float]) -> list:
    """40x100 px boxes whose top-left corners start at ``starts`` and move ``step`` px/frame."""
    return [
        (
            x + step[0] * index,
            y + step[1] * index,
            x + step[0] * index + 40,
            y + step[1] * index + 100,
        )
        for x, y in starts
    ]


GATE = [(100.0, 100.0), (300.0, 120.0)]  # two people walking right, 3 px/frame
LAWN = [(80.0, 50.0), (250.0, 60.0), (450.0, 40.0)]  # three walking down, 2 px/frame


def run_two_cameras(
    stage: DetectStage, pred: ScriptedPredictor, n: int = 30
) -> list[DetectedFrame]:
    """``n`` frames of each camera in batches of four (two frames of each camera per batch)."""
    out: list[DetectedFrame] = []
    for i in range(0, n, 2):
        batch = [
            pred.frame(cam, j, walkers(j, starts, step))
            for j in (i, i + 1)
            for cam, starts, step in (("gate", GATE, (3.0, 0.0)), ("lawn", LAWN, (0.0, 2.0)))
        ]
        got = stage.process(batch)
        assert [(d.frame.camera, d.frame.index) for d in got] == [
            (f.camera, f.index) for f in batch
        ]
        assert all(d.frame is f for d, f in zip(got, batch, strict=True))
        out.extend(got)
    return out


def ids_by_start(frames: list[DetectedFrame], camera: str) -> list[list[int]]:
    """Per frame of ``camera``: its track ids, ordered by box x1 (the walkers never cross)."""
    rows = []
    for d in frames:
        if d.frame.camera == camera:
            persons = sorted(d.poses.persons, key=lambda p: float(p.bbox[0]))
            rows.append([p.track_id for p in persons])
    return rows


def test_track_ids_are_stable_per_camera_and_cameras_do_not_share_trackers() -> None:
    pred = ScriptedPredictor()
    stage = DetectStage(pred)
    frames = run_two_cameras(stage, pred, 30)
    assert pred.calls == [4] * 15
    assert stage.cameras == ["gate", "lawn"]
    gate, lawn = ids_by_start(frames, "gate"), ids_by_start(frames, "lawn")
    assert len(gate) == len(lawn) == 30
    # Every person keeps one id for the 30 frames; each camera numbers its people from 1.
    assert gate == [[1, 2]] * 30
    assert lawn == [[1, 2, 3]] * 30
    for d in frames:
        assert d.poses.camera == d.frame.camera
        assert d.poses.frame_index == d.frame.index
        assert d.poses.timestamp == pytest.approx(d.frame.index / 25)
        assert d.poses.image_size == (W, H)
        # Persons carry the detection's own box and keypoints (not the Kalman estimate).
        starts, step = (GATE, (3.0, 0.0)) if d.frame.camera == "gate" else (LAWN, (0.0, 2.0))
        want = np.array(walkers(d.frame.index, starts, step), np.float32)
        got = np.array(sorted((p.bbox.tolist() for p in d.poses.persons), key=lambda b: b[0]))
        np.testing.assert_allclose(got, want, atol=1e-4)
        for p in d.poses.persons:
            assert p.score == pytest.approx(0.9)
            assert p.keypoints.shape == (17, 3)
            np.testing.assert_allclose(p.keypoints[0, :2], p.bbox[:2], atol=1e-4)


def test_a_new_person_gets_the_next_id_of_its_own_camera() -> None:
    pred = ScriptedPredictor()
    stage = DetectStage(pred)
    seen: dict[str, set[int]] = {"gate": set(), "lawn": set()}
    for i in range(20):
        gate = walkers(i, GATE, (3.0, 0.0))
        if i >= 10:  # a third person enters the gate camera at frame 10
            gate.append((500.0, 300.0, 540.0, 400.0))
        for d in stage.process(
            [pred.frame("gate", i, gate), pred.frame("lawn", i, walkers(i, LAWN, (0.0, 2.0)))]
        ):
            seen[d.frame.camera].update(p.track_id for p in d.poses.persons)
    assert seen == {"gate": {1, 2, 3}, "lawn": {1, 2, 3}}


def test_trackers_are_created_lazily_per_camera_and_reset_forgets_one() -> None:
    made: list[str] = []

    def factory(camera: str) -> CameraTracker:
        made.append(camera)
        return CameraTracker(camera)

    pred = ScriptedPredictor()
    stage = DetectStage(pred, tracker_factory=factory)
    assert made == [] and stage.cameras == []
    run_two_cameras(stage, pred, 4)
    assert made == ["gate", "lawn"]
    assert stage.tracker_of("gate") is not stage.tracker_of("lawn")
    stage.reset("gate")
    stage.reset("nowhere")  # unknown camera: nothing to forget
    assert stage.cameras == ["lawn"]
    # The gate's people come back under fresh ids 1, 2 from a new tracker; the lawn's go on.
    got = stage.process(
        [
            pred.frame("gate", 50, walkers(50, GATE, (3.0, 0.0))),
            pred.frame("lawn", 4, walkers(4, LAWN, (0.0, 2.0))),
        ]
    )
    assert made == ["gate", "lawn", "gate"]
    assert sorted(p.track_id for p in got[0].poses.persons) == [1, 2]
    assert sorted(p.track_id for p in got[1].poses.persons) == [1, 2, 3]


def test_roi_keeps_persons_whose_box_centre_is_inside() -> None:
    # ROI x in [0, 200]: A's box crosses the edge but its centre (x 180 -> 194.5) is inside;
    # B's box overlaps the ROI but its centre (x 225 -> 239.5) is outside.
    roi = (0, 0, 200, 480)
    pred = ScriptedPredictor()
    stage = DetectStage(pred, rois={"gate": roi, "lawn": None})
    kept = []
    for i in range(30):
        boxes = [
            (150 + 0.5 * i, 100.0, 210 + 0.5 * i, 250.0),
            (190 + 0.5 * i, 150.0, 260 + 0.5 * i, 300.0),
        ]
        gate, lawn = stage.process([pred.frame("gate", i, boxes), pred.frame("lawn", i, boxes)])
        assert len(lawn.poses.persons) == 2  # no ROI on the lawn
        assert len(gate.poses.persons) == 1
        (p,) = gate.poses.persons
        np.testing.assert_allclose(p.bbox, boxes[0], atol=1e-4)
        kept.append(p.track_id)
    assert kept == [kept[0]] * 30  # filtering after tracking leaves ids alone


def test_inside_roi_uses_the_box_centre_edges_included() -> None:
    roi = (10, 20, 110, 220)
    assert inside_roi(np.array([0.0, 0.0, 20.0, 40.0]), roi)  # centre (10, 20): a corner
    assert inside_roi(np.array([100.0, 200.0, 120.0, 240.0]), roi)  # centre (110, 220)
    assert not inside_roi(np.array([100.0, 200.0, 121.0, 240.0]), roi)  # centre x 110.5
    assert not inside_roi(np.array([50.0, 0.0, 60.0, 39.0]), roi)  # centre y 19.5


def test_detect_s_is_batch_time_over_batch_length() -> None:
    pred = ScriptedPredictor(delay=0.06)
    stage = DetectStage(pred)
    batch = [pred.frame(f"cam{k}", 0, [(10.0, 10.0, 50.0, 110.0)]) for k in range(3)]
    got = stage.process(batch)
    assert len({d.detect_s for d in got}) == 1  # one value for the whole batch
    # Divided by the batch length: below the 0.06 s one call sleeps, even with 0.12 s of
    # scheduling delay on a busy machine.
    assert 0.06 / 3 <= got[0].detect_s < 0.06
    (one,) = stage.process([pred.frame("cam0", 1, [(10.0, 10.0, 50.0, 110.0)])])
    assert one.detect_s >= 0.06


def test_empty_batch_skips_the_model_and_a_short_answer_is_an_error() -> None:
    pred = ScriptedPredictor()
    stage = DetectStage(pred)
    assert stage.process([]) == [] and pred.calls == []

    class Short:
        def predict(self, frames: Sequence[np.ndarray], /) -> list[Detections]:
            return [detections([])]

    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="1 results for 2 frames"):
        DetectStage(Short()).process([Frame("a", 0, 0.0, image), Frame("a", 1, 0.04, image)])


def test_frames_without_people_still_age_tracks() -> None:
    pred = ScriptedPredictor()
    stage = DetectStage(pred)
    ids = []
    for i in range(12):
        boxes = [] if 4 <= i < 7 else walkers(i, GATE[:1], (3.0, 0.0))
        (d,) = stage.process([pred.frame("gate", i, boxes)])
        ids.append([p.track_id for p in d.poses.persons])
    # Lost for three frames, found again under its old id (ByteTrack keeps lost tracks).
    assert ids == [[1]] * 4 + [[]] * 3 + [[1]] * 5


def test_name_lists_follow_their_literals() -> None:
    assert TRACKERS == ("bytetrack", "botsort")
    assert BACKENDS == ("auto", "torch", "openvino", "onnx")


class OnePerson:
    """One person standing in every frame, wherever the video is."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, frames: Sequence[np.ndarray], /) -> list[Detections]:
        self.calls.append(len(frames))
        return [detections([(40.0, 30.0, 80.0, 130.0)], (f.shape[1], f.shape[0])) for f in frames]


def test_track_video_without_yolo(videos: Path) -> None:
    pred = OnePerson()
    seen: list[tuple[int, PoseFrame]] = []
    frames = list(
        track_video(
            pred,
            videos / "street_demo.mp4",
            "street",
            batch_size=2,
            on_frame=lambda f, pf: seen.append((f.index, pf)),
        )
    )
    assert [f.frame_index for f in frames] == list(range(5))
    assert [i for i, _ in seen] == list(range(5))
    assert all(pf is f for (_, pf), f in zip(seen, frames, strict=True))
    assert all(f.camera == "street" for f in frames)
    assert [[p.track_id for p in f.persons] for f in frames] == [[1]] * 5
    assert sum(pred.calls) == 5 and max(pred.calls) <= 2


def test_track_video_raises_on_a_truncated_file_after_its_frames(
    videos: Path, tmp_path: Path
) -> None:
    data = (videos / "vtest.avi").read_bytes()
    cut = tmp_path / "half.avi"
    cut.write_bytes(data[: len(data) // 3])
    got = []
    with pytest.raises(SourceError, match=r"half\.avi.*truncated"):
        for pf in track_video(OnePerson(), cut, batch_size=8):
            got.append(pf.frame_index)
    assert got and got == list(range(len(got)))


def test_tracked_frames_state_their_cameras_frame_rate() -> None:
    """Scoring places a frame on its model's time axis by the camera's rate
    (tests/pipelines/test_frame_rate.py); the stage passes the source's rate on."""
    pred = ScriptedPredictor()
    known, unknown = pred.frame("a", 0, GATE), pred.frame("b", 0, GATE)
    known.fps, unknown.fps = 12.5, 0.0
    out = DetectStage(pred).process([known, unknown])
    assert [d.poses.fps for d in out] == [12.5, None]
    assert out[0].poses.to_dict()["fps"] == 12.5 and "fps" not in out[1].poses.to_dict()
