import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.alerts import Alert, AlertLifecycle, alert_schema, top_joints

REPO = Path(__file__).resolve().parents[2]


def _feed(
    life: AlertLifecycle, scores: list[float], fps: float = 10.0, track: int = 1
) -> list[tuple[int, str]]:
    out = []
    for i, s in enumerate(scores):
        for a in life.update(track, i / fps, i, s, joints=np.arange(17.0)):
            out.append((i, a.type))
    return out


def test_episode_new_update_end_with_min_duration_and_hysteresis() -> None:
    life = AlertLifecycle(
        "gate",
        threshold=1.0,
        min_duration_s=0.3,
        hysteresis=0.2,
        update_interval_s=1.0,
        cooldown_s=0,
    )
    scores = [0.5] * 5 + [2.0] * 25 + [0.9] * 5 + [0.7] * 5
    events = _feed(life, scores)
    # new after 0.3 s above (frame 5 + 3), updates every 1 s, end below 1.0 - 0.2.
    assert events == [(8, "new"), (18, "update"), (28, "update"), (35, "end")]


def test_short_blips_and_cooldown() -> None:
    life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.5, cooldown_s=2.0)
    assert _feed(life, [2.0, 2.0, 0.0] * 5) == []  # never 0.5 s above
    life2 = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0, cooldown_s=2.0)
    events = _feed(life2, [2.0, 0.0, 2.0, 0.0] + [2.0] * 30)
    assert events[:2] == [(0, "new"), (1, "end")]
    assert events[2] == (21, "new")  # cool-down of 2 s after the end at 0.1 s


def test_ids_are_stable_per_episode_and_deterministic() -> None:
    a = AlertLifecycle(
        "gate", threshold=1.0, min_duration_s=0.0, update_interval_s=0.1, cooldown_s=0
    )
    b = AlertLifecycle(
        "gate", threshold=1.0, min_duration_s=0.0, update_interval_s=0.1, cooldown_s=0
    )
    scores = [2.0] * 5 + [0.0] + [2.0] * 5
    ids_a = [x.alert_id for i, s in enumerate(scores) for x in a.update(4, i / 10, i, s)]
    ids_b = [x.alert_id for i, s in enumerate(scores) for x in b.update(4, i / 10, i, s)]
    assert ids_a == ids_b
    assert len(set(ids_a)) == 2  # two episodes
    c = AlertLifecycle("other", threshold=1.0, min_duration_s=0.0)
    assert c.update(4, 0.0, 0, 2.0)[0].alert_id != ids_a[0]


def test_lost_tracks_and_shutdown_end_open_episodes() -> None:
    life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0)
    life.update(1, 0.0, 0, 5.0)
    life.update(2, 0.0, 0, 5.0)
    life.update(3, 0.0, 0, 0.1)
    assert life.open_episodes == 2
    ends = life.lost(1, 1.0)
    assert [e.type for e in ends] == ["end"] and ends[0].end_ts == 1.0
    rest = life.close_all(2.0)
    assert [(e.type, e.track_id) for e in rest] == [("end", 2)]
    assert life.open_episodes == 0


def test_alert_message_fields_and_schema() -> None:
    life = AlertLifecycle("gate", threshold=1.0, min_duration_s=0.0, top_k=2)
    kp = np.full((17, 3), 5.0)
    kp[3] = np.nan
    joints = np.zeros(17)
    joints[15], joints[9] = 3.0, 2.0
    a = life.update(7, 12.5, 125, 4.0, bbox=[1, 2, 3, 4], keypoints=kp, joints=joints)[0]
    d = json.loads(a.model_dump_json())
    assert d["schema_version"] == 2 and d["camera"] == "gate" and d["track_id"] == 7
    assert d["snapshot"] is None  # filled by the sinks' stamp when pictures are kept
    old = {k: v for k, v in d.items() if k != "snapshot"}  # a version 1 message is still read
    Alert.model_validate({**old, "schema_version": 1, "model": {"name": "m", "version": "v"}})
    assert [j["name"] for j in d["top_joints"]] == ["left_ankle", "left_wrist"]
    assert d["keypoints"][3] == [0.0, 0.0, 0.0] and len(d["keypoints"]) == 17
    Alert.model_validate(d)
    with pytest.raises(ValueError):
        Alert.model_validate({**d, "extra_field": 1})
    checked_in = json.loads((REPO / "schemas" / "alert.schema.json").read_text())
    assert checked_in == alert_schema(), "regenerate schemas/alert.schema.json"


def test_top_joints_skips_nan() -> None:
    c = np.full(17, np.nan)
    c[0], c[16] = 1.0, 2.0
    assert [j.name for j in top_joints(c, 3)] == ["right_ankle", "nose"]


def test_a_clock_that_steps_back_neither_silences_nor_stretches_an_episode() -> None:
    # Intervals a little off the frame grid: i / 10 - 60 is not exact in binary.
    life = AlertLifecycle(
        "gate", threshold=1.0, min_duration_s=0.25, update_interval_s=0.95, cooldown_s=1.95
    )
    events = []
    for i in range(80):  # 10 fps; the clock steps back 60 s at frame 30 (an NTP correction)
        ts = i / 10 - (60.0 if i >= 30 else 0.0)
        score = 2.0 if i < 60 else 0.0
        events += [(i, a.type, a) for a in life.update(1, ts, i, score)]
    kinds = [(i, k) for i, k, _ in events]
    # The same events as an unbroken clock: new after 0.3 s, an update every second, end.
    assert kinds == [(3, "new"), (13, "update"), (23, "update"), (33, "update"),
                     (43, "update"), (53, "update"), (60, "end")]  # fmt: skip
    end = events[-1][2]
    assert end.end_ts is not None
    assert end.end_ts - end.start_ts == pytest.approx(6.0)  # frames 0 (above) to 60, 10 fps
    assert life.clock_steps == 1
    # A cool-down started after the step still runs on the new clock.
    after = [(i, a.type) for i in range(80, 130) for a in life.update(1, i / 10 - 60, i, 2.0)]
    assert after[0] == (83, "new")  # 2 s after the end at frame 60, plus 0.3 s
