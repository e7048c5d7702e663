"""Poison pose messages on a real broker (tansu): `posewatch score` members never die on
message content, bad messages go to the dead-letter topic once, and every good window is
scored exactly as on a clean topic. Frame indices that go backwards, repeat or jump."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detector.pose import Person, PoseFrame
from pipelines.broker import EmbeddedBroker
from pipelines.config import load_config
from pipelines.detect_service import encode_poseframe
from pipelines.kafka_util import ensure_topic
from pipelines.model_provider import CheckpointProvider
from pipelines.score_service import ScoreService
from pipelines.score_stage import ScoreStage
from tests.pipelines.test_scale_out import read_topic, run_in_thread, scores_of
from tests.pipelines.test_score_stage import config, synthetic_frames
from tests.pipelines.test_score_stage import one_torch_thread as one_torch_thread  # fixture
from tests.pipelines.test_score_stage import tiny_ckpt as tiny_ckpt  # fixture


def _person(tid: int, x: float) -> Person:
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(x, x + 40, 17)
    kp[:, 1] = np.linspace(300, 460, 17)
    kp[:, 2] = 0.9
    return Person(tid, np.array([x - 5, 295, x + 45, 465], np.float32), 0.9, kp)


def the_issues_poison() -> list[PoseFrame]:
    """Camera ``c``, track 9: frames 100, 0, 110, then 23 more frames at 30."""
    idx = [100, 0, 110, *([30] * 23)]
    return [
        PoseFrame("c", f, f / 10, (1280, 720), [_person(9, 100.0 + i)]) for i, f in enumerate(idx)
    ]


def test_frame_indices_backwards_duplicated_or_jumping_never_raise(tiny_ckpt: Path) -> None:
    cfg = config(tiny_ckpt)
    cfg.alerting.threshold = -1e9
    stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
    scorer = stage.provider.model_for("c").scorer  # type: ignore[union-attr]
    stage.process(the_issues_poison())
    assert scorer.duplicates == 22  # frame 30 seen 23 times: 22 repeats dropped
    assert stage.camera_restarts == 2  # 100 -> 0 and 110 -> 30: more than a window back
    # A small step back restarts only that person; a jump forward leaves a gap.
    walk = [PoseFrame("d", f, f / 10, (1280, 720), [_person(1, 100.0 + f), _person(2, 600.0)])
            for f in [*range(0, 40), 35, *range(36, 45), 10**6, 10**6 + 1]]  # fmt: skip
    outs = stage.process(walk)
    assert scorer.restarts >= 2 and stage.camera_restarts == 2
    scored = [(s.track_id, s.frame_index) for o in outs for s in o.scores]
    assert (1, 24) in scored and (2, 24) in scored  # scored before the step back
    assert all(f < 10**6 for _, f in scored)  # nothing scored across the 10**6 jump
    assert stage.frames_held == 1  # 10**6 waited for 10**6 + 1, which confirmed the jump
    # One stray index far ahead in a camera's stream: skipped, nothing restarts, and every
    # other frame scores exactly as without it.
    clean = [PoseFrame("e", f, f / 10, (1280, 720), [_person(1, 100.0 + f)]) for f in range(80)]
    stray = PoseFrame("e", 10**12 - 1, 1e9, (1280, 720), [_person(1, 100.0)])
    ref_stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
    ref = [(s.frame_index, s.smoothed) for o in ref_stage.process(clean) for s in o.scores]
    got_stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
    outs = got_stage.process([*clean[:50], stray, *clean[50:]])
    got = [(s.frame_index, s.smoothed) for o in outs for s in o.scores]
    assert got == ref and len(ref) > 20
    assert got_stage.frames_held == 1 and got_stage.camera_restarts == 0
    assert not any(a.type == "end" for o in outs for a in o.alerts)


def _publish(bootstrap: str, topic: str, frames: list[tuple[str, bytes]]) -> None:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    part = {"a": 0, "b": 1}
    for cam, value in frames:
        prod.send(topic, key=cam.encode(), value=value, partition=part.get(cam, 2))
    prod.flush(30)
    prod.close()


def _cfg(bs: str, ckpt: Path, tmp: Path, name: str) -> Any:
    data = config(ckpt).model_dump(mode="json")
    data["alerting"]["threshold"] = 0.5
    data["kafka"].update(
        bootstrap_servers=[bs], topic=f"alerts.{name}", spool_dir=str(tmp / name / "spool"),
        session_timeout_s=6.0, poses_topic=f"poses.{name}",
    )  # fmt: skip
    data["outputs"] = {"scores_jsonl": str(tmp / f"{name}.scores.jsonl"), "alerts_jsonl": None}
    return load_config(data=data)


@pytest.mark.broker
def test_poison_messages_are_dead_lettered_once_and_good_windows_score_as_on_a_clean_topic(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = [(f.camera, encode_poseframe(f)) for f in synthetic_frames(80, ("a", "b"))]
    poison = [("c", encode_poseframe(f)) for f in the_issues_poison()]
    boom = PoseFrame("boom", 0, 0.0, (1280, 720), [_person(1, 50.0)])
    bad = [
        ("c", b"\xff not json"),
        ("c", json.dumps({**json.loads(good[0][1]), "camera": "../../etc/passwd"}).encode()),
        ("c", encode_poseframe(boom)),  # scoring it raises (injected below)
    ]
    # Poison on a good camera too: a message of camera "a" with NaN keypoints (dead-lettered),
    # one repeated (dropped) and a stray frame index far ahead (skipped): camera a's windows
    # must still score exactly as on the clean topic.
    a_frame = json.loads(next(v for c, v in good if c == "a"))
    nan_kp = {**a_frame, "frame_index": 10}
    nan_kp["persons"][0]["keypoints"][0] = [float("nan"), 1.0, 0.9]
    bad.append(("a", json.dumps(nan_kp).encode()))
    mixed = good[:60] + poison[:13] + bad + poison[13:] + good[60:]
    after = 60 + len(poison) + len(bad)  # in good[60:]
    at = next(i for i, (c, _) in enumerate(mixed) if c == "a" and i >= after)
    repeat = mixed[at][1]  # the same message twice in a row
    stray = {**json.loads(repeat), "frame_index": 10**11}
    mixed[at + 1 : at + 1] = [("a", repeat), ("a", json.dumps(stray).encode())]
    real_process = ScoreStage.process

    def process(self: ScoreStage, frames: Any, fps: Any = None) -> Any:
        if any(f.camera == "boom" for f in frames):
            raise RuntimeError("injected fault while scoring")
        return real_process(self, frames, fps)

    monkeypatch.setattr(ScoreStage, "process", process)
    with EmbeddedBroker() as broker:
        bs = broker.bootstrap
        for topic in ("poses.clean", "poses.poison"):
            ensure_topic(bs, topic, partitions=3)
        for topic in ("posewatch.poses.dlq", "alerts.clean", "alerts.poison"):
            ensure_topic(bs, topic)
        _publish(bs, "poses.clean", good)
        clean = ScoreService(_cfg(bs, tiny_ckpt, tmp_path, "clean"), group_id="clean")
        s = run_in_thread(clean, lambda: clean.consumed >= len(good), timeout=120)
        assert s.invalid == 0
        ref = scores_of(tmp_path / "clean.scores.jsonl")
        # The same frames with the poison mixed in, on a topic of their own.
        _publish(bs, "poses.poison", mixed)
        member1 = ScoreService(_cfg(bs, tiny_ckpt, tmp_path, "poison"), group_id="poison")
        s1 = run_in_thread(member1, lambda: member1.consumed >= len(mixed), timeout=120)
        assert s1.invalid == len(bad)  # counted, the member alive to the end
        got = scores_of(tmp_path / "poison.scores.jsonl")
        good_keys = {k for k in got if k[0] in ("a", "b")}
        assert good_keys == set(ref) and len(ref) > 60
        assert all(got[k] == pytest.approx(ref[k], abs=1e-6) for k in ref)
        dlq = read_topic(bs, "posewatch.poses.dlq")
        assert len(dlq) == len(bad)
        reasons = [dict(r.headers)["error"].decode() for r in dlq]
        assert any("keypoint" in r.lower() and "nan" in r.lower() for r in reasons), reasons
        for want in (
            "not UTF-8",
            "camera name '../../etc/passwd' is not valid",
            "scoring failed: RuntimeError('injected fault while scoring')",
        ):
            assert sum(want in r for r in reasons) == 1, (want, reasons)  # fmt: skip
        # A second member of the group, started after the first: it replays from the replay
        # point, does not die, and sends no dead letter twice.
        member2 = ScoreService(_cfg(bs, tiny_ckpt, tmp_path, "poison"), group_id="poison")
        run_in_thread(member2, lambda: False, timeout=15)
        assert len(read_topic(bs, "posewatch.poses.dlq")) == len(bad)


def test_cameras_beyond_the_bound_are_refused(tiny_ckpt: Path) -> None:
    """Each camera is a metric label series: a member takes at most kafka.max_cameras."""
    from pipelines.score_service import PoseFileError

    cfg = config(tiny_ckpt)
    cfg.kafka.max_cameras = 2
    cfg.alerting.threshold = 1.0
    svc = ScoreService(cfg)
    tp = type("TP", (), {"topic": "posewatch.poses", "partition": 0})()
    for i, cam in enumerate(["a", "b", "a", "b"]):
        svc.admit(cam, tp)
        svc.score_frame(PoseFrame(cam, i, i / 10, (1280, 720), [_person(1, 50.0)]), tp, i)
    with pytest.raises(
        PoseFileError, match=r"camera 'c' refused: .* 2 cameras \(kafka\.max_cameras\)"
    ):
        svc.admit("c", tp)
    svc.admit("a", tp)  # known cameras go on
