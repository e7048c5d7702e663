"""Sinks behind one interface, fanned out by the router (no broker: file sinks only)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.pose import Person
from pipelines.alerts import Alert, AlertLifecycle
from pipelines.config import PosewatchConfig
from pipelines.metrics import Metrics
from pipelines.sinks import AlertRouter, AlertSink, FrameView, build_sinks
from pipelines.sinks.jsonl import JsonlSink
from pipelines.sinks.scores import ScoresJsonlSink
from pipelines.sinks.snapshots import SnapshotSink
from pipelines.sinks.video import AnnotatedVideoSink
from pipelines.track_scoring import PersonScore


def _person(tid: int = 4) -> Person:
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(280, 320, 17)
    kp[:, 1] = np.linspace(100, 260, 17)
    kp[:, 2] = 0.9
    return Person(tid, np.array([270, 90, 330, 270], np.float32), 0.9, kp)


def _alerts() -> list[Alert]:
    life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0)
    p = _person()
    return life.update(4, 0.0, 10, 3.0, p.bbox, p.keypoints) + life.update(4, 0.1, 11, 0.0)


def _view(image: np.ndarray | None, index: int = 10) -> FrameView:
    p = _person()
    score = PersonScore("gate", 4, index, index / 10, 2.5, 3.0, np.zeros(17), p.bbox, p.keypoints)
    return FrameView("gate", index, index / 10, (640, 360), [p], image, [score], 1.0, {4})


class Broken(AlertSink):
    name = "broken"

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        raise OSError("disk on fire")

    def frame(self, view: FrameView) -> None:
        raise OSError("disk on fire")


def _count(m: Metrics, name: str, **labels: str) -> float:
    return float(m.registry.get_sample_value(name, labels) or 0.0)


def test_a_failing_sink_is_counted_and_the_others_still_get_every_alert(tmp_path: Path) -> None:
    m = Metrics()
    jsonl = JsonlSink(tmp_path / "alerts.jsonl")
    router = AlertRouter([Broken(), jsonl], m)
    alerts = _alerts()
    router.publish(alerts)
    router.frame(_view(None))
    assert router.flush() is True  # the broken sink is best-effort: counted, not blocking
    assert router.close() is True
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["new", "end"]
    assert _count(m, "posewatch_sink_errors_total", sink="broken") == 3  # 2 alerts + 1 frame
    assert _count(m, "posewatch_sink_alerts_total", sink="jsonl") == 2
    assert _count(m, "posewatch_sink_alerts_total", sink="broken") == 0
    assert _count(m, "posewatch_alerts_total", camera="gate", type="new") == 1
    assert router.counts == {"new": 1, "end": 1}


class Flaky(AlertSink):
    """A required sink whose disk is full until ``healthy`` is set."""

    name = "spool"
    required = True

    def __init__(self) -> None:
        self.healthy = False
        self.taken: list[str] = []

    def publish(self, alert: Alert, view: FrameView | None = None) -> None:
        if not self.healthy:
            raise OSError(28, "No space left on device")
        self.taken.append(f"{alert.alert_id}/{alert.type}")


def test_alerts_a_required_sink_failed_to_take_wait_and_go_out_in_order(
    tmp_path: Path,
) -> None:
    m = Metrics()
    flaky = Flaky()
    jsonl = JsonlSink(tmp_path / "alerts.jsonl")
    router = AlertRouter([flaky, jsonl], m, retry_max=3)
    assert router.flush() is True
    new, end = _alerts()
    router.publish([new])
    assert [len(q) for q in router.waiting.values()] == [1]
    assert router.flush() is False  # `score` does not commit while an alert waits
    router.tick()  # still failing: nothing moves, nothing is lost
    router.publish([end])  # behind the waiting one, never ahead of it
    assert flaky.taken == [] and router.flush() is False
    flaky.healthy = True  # space is back: the next round delivers, in order
    router.tick()
    assert flaky.taken == [f"{new.alert_id}/new", f"{end.alert_id}/end"]
    assert router.flush() is True and router.lost == {}
    assert _count(m, "posewatch_sink_errors_total", sink="spool") == 4  # one per failed try
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2
    # A waiting list that overflows loses its oldest (counted), and says so at close.
    flaky.healthy = False
    router.publish(_alerts() * 2)
    assert router.lost == {"spool": 1} and router.close() is False


def test_snapshot_with_and_without_an_image(tmp_path: Path) -> None:
    new, end = _alerts()
    sink = SnapshotSink(tmp_path)
    sink.publish(end, None)  # only `new` alerts get a snapshot
    assert list(tmp_path.iterdir()) == []
    image = np.full((360, 640, 3), 90, np.uint8)
    sink.publish(new, _view(image))
    live = cv2.imread(str(sink.path_of(new)))
    assert live.shape == (360, 640, 3)
    # Split mode (posewatch score): no image; the alert's own keypoints on a blank canvas of
    # the frame's size, the person's box in red.
    sink.publish(new, _view(None))
    blank = cv2.imread(str(sink.path_of(new)))
    assert blank.shape == (360, 640, 3)
    red = (blank[..., 2] > 180) & (blank[..., 1] < 80) & (blank[..., 0] < 80)
    assert red[88:94, 270:331].any()  # top edge of the box
    assert (np.abs(blank.astype(int) - 32) > 40).mean() > 0.002  # a skeleton was drawn
    sink.publish(new, None)  # no view at all: a canvas that holds the box
    assert cv2.imread(str(sink.path_of(new))).shape[0] >= 270
    assert sink.count == 3


def test_video_and_scores_sinks_see_every_frame(tmp_path: Path) -> None:
    video = AnnotatedVideoSink(tmp_path / "video")
    scores = ScoresJsonlSink(tmp_path / "scores.jsonl")
    router = AlertRouter([video, scores], Metrics())
    for i in range(12):
        router.frame(_view(None, i))
    router.close()
    cap = cv2.VideoCapture(str(tmp_path / "video" / "gate.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 640
    rows = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(12))
    assert rows[0] == {"camera": "gate", "track_id": 4, "frame_index": 0, "score": 2.5,
                       "smoothed": 3.0}  # fmt: skip


@pytest.mark.parametrize(
    ("outputs", "names"),
    [
        ({}, ["snapshot_ref", "store", "jsonl"]),  # the store beside the JSONL file
        ({"alerts_jsonl": None, "store": None}, []),
        (
            {"snapshots": "s", "annotated_video": "v", "scores_jsonl": "x.jsonl"},
            ["snapshot_ref", "store", "jsonl", "snapshots", "video", "scores"],
        ),
    ],
)
def test_every_output_setting_builds_its_sink(
    tmp_path: Path, outputs: dict[str, str | None], names: list[str]
) -> None:
    out = {k: (str(tmp_path / v) if v else None) for k, v in outputs.items()}
    cfg = PosewatchConfig.model_validate(
        {
            "cameras": {"a": {"source": "a.mp4"}},
            "outputs": {"alerts_jsonl": str(tmp_path / "a.jsonl"), **out},
        }
    )
    assert [s.name for s in build_sinks(cfg)] == names


def test_a_huge_stated_image_size_draws_a_capped_canvas(tmp_path: Path) -> None:
    """A pose message may say 16384 x 16384 (validation allows it): no sink allocates that."""
    new, _ = _alerts()
    p = _person()
    view = FrameView("gate", 10, 1.0, (16384, 16384), [p], None, [], 1.0, {4})
    assert view.canvas().shape == (2160, 3840, 3)
    sink = SnapshotSink(tmp_path)
    sink.publish(new, view)
    assert cv2.imread(str(sink.path_of(new))).shape == (2160, 3840, 3)
