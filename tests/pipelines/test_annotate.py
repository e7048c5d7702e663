import json
from pathlib import Path

import cv2
import numpy as np

from detector.pose import Person
from pipelines.alerts import Alert, AlertLifecycle
from pipelines.annotate import AnnotatedVideoWriter, draw_persons, snapshot_jpeg
from pipelines.sinks.jsonl import JsonlSink


def _person(tid: int = 5) -> Person:
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(80, 120, 17)
    kp[:, 1] = np.linspace(40, 160, 17)
    kp[:, 2] = 0.9
    kp[3] = 0  # missing keypoint: not drawn
    return Person(tid, np.array([70, 30, 130, 170]), 0.9, kp)


def _red(img: np.ndarray) -> np.ndarray:
    return (img[..., 2] > 200) & (img[..., 1] < 50) & (img[..., 0] < 50)


def test_overlay_draws_skeleton_bar_and_red_box_only_when_alerting() -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    p = _person()
    calm = draw_persons(img, [p], {5: -6.0}, threshold=1.0)
    alarm = draw_persons(img, [p], {5: 6.0}, threshold=1.0, alerting={5})
    assert (calm != img).any() and (img == 0).all()  # a copy is drawn on
    assert _red(alarm)[30:34, 70:131].any()  # top edge of the red box
    assert not _red(calm).any()
    bar_green = calm[174:180, 70:131, 1] > 150
    assert bar_green.any()  # low score: a short green bar


def test_snapshot_and_video_writer(tmp_path: Path) -> None:
    img = np.full((120, 160, 3), 40, np.uint8)
    jpg = snapshot_jpeg(img, _person(), 3.0, 1.0)
    dec = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert dec.shape == (120, 160, 3)
    w = AnnotatedVideoWriter(tmp_path / "cam.mp4", fps=10)
    for i in range(12):
        w.write(np.full((120, 160, 3), i * 10, np.uint8))
    w.close()
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and w.frames == 12


def test_jsonl_sink_writes_one_valid_alert_per_line(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "out" / "alerts.jsonl")
    life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0)
    for a in life.update(1, 0.0, 0, 3.0) + life.update(1, 0.1, 1, 0.0):
        sink.publish(a)
    sink.close()
    lines = (tmp_path / "out" / "alerts.jsonl").read_text().splitlines()
    assert [Alert.model_validate(json.loads(x)).type for x in lines] == ["new", "end"]
    assert sink.count == 2
