"""Cold start: learning a scene from its own footage (real AIHub2 poses, real training)."""

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

from detector.datasets import load_split
from detector.pose import frames_from_tracks
from forecasting.scoring import posture_of, resolve_scorer
from forecasting.torch_model import Ensemble
from pipelines.learning import LearnSettings, SceneLearner

FAST = {
    "epochs": 3,
    "hidden": 48,
    "flow_layers": 2,
    "max_train_minutes": 5.0,  # 3 epochs end it first; both flows fit on a loaded machine
    "samples": 10,
    "posture_flows": 2,
    "posture_epochs": 2,
}


def _frames(aihub2: Path, clip_index: int = 0, fps: float = 30.0):  # type: ignore[no-untyped-def]
    clips = load_split(aihub2, "test")
    clip = clips[clip_index]
    return frames_from_tracks(clip.tracks, "hall", (1920, 1080), fps=fps), clip


def test_scene_learner_trains_calibrates_saves_and_reuses(aihub2: Path, tmp_path: Path) -> None:
    frames, clip = _frames(aihub2)
    # Learn from the clip's first normal stretch (a cold-started camera sees normal life).
    labels = clip.frame_labels()
    first_bad = int(np.argmax(labels > 0)) if labels.any() else len(labels)
    frames = [f for f in frames if f.frame_index < first_bad]
    seconds = (frames[-1].timestamp - frames[0].timestamp) * 0.9
    learner = SceneLearner("hall", LearnSettings(seconds=seconds, save_dir=tmp_path, **FAST))
    assert learner.phase == "learning"
    for f in frames:
        learner.add(f, fps=30.0)
        if learner.phase != "learning":
            break
    assert learner.phase == "training"  # started by itself once `seconds` were collected
    assert learner.wait(timeout=600)
    learned = learner.poll()
    assert learned is not None, learner.error
    assert learner.phase == "scoring"
    assert learner.poll() is None  # handed over once
    assert np.isfinite(learned.threshold)
    assert learned.info["train_windows"] >= 100 and learned.info["holdout_windows"] >= 20
    cal = learned.checkpoint.calibration
    assert cal["threshold"] == learned.threshold and cal["target_per_hour"] == 1.0
    assert learned.checkpoint.meta["learned_scene"] == "hall"
    # It trained what the default scorer needs, and calibrated that scorer.
    assert learned.info["posture_flows"] == 2
    assert resolve_scorer("auto", learned.checkpoint.model) == "fused"
    assert cal["scorer"]["name"] == "fused"
    # its fused score measures motion against all held-out windows, not per speed (a
    # forecaster of minutes of footage is a weak motion detector: docs/DECISIONS.md, s. 28)
    posture = posture_of(learned.checkpoint.model)
    assert posture is not None and not posture.cfg.speed_conditioned
    assert not any("motion_slope" in k for k in learned.checkpoint.model.state_dict())
    assert (tmp_path / "hall.pt").exists()
    assert not list(tmp_path.glob(".learn-*"))  # the private training directory is gone
    # The next start reuses the saved model instead of learning again.
    again = SceneLearner("hall", LearnSettings(save_dir=tmp_path, **FAST))
    reused = again.poll()
    assert reused is not None and again.phase == "scoring"
    assert reused.threshold == learned.threshold


def test_too_little_footage_fails_with_a_clear_reason(aihub2: Path) -> None:
    frames, _ = _frames(aihub2)
    learner = SceneLearner("hall", LearnSettings(seconds=3600, **FAST))
    for f in frames[:20]:
        learner.add(f, fps=30.0)
    learner.input_ended()  # the source ended before the learning time was up
    assert learner.wait(timeout=120)
    assert learner.poll() is None
    assert learner.phase == "failed"
    assert learner.error is not None
    assert "hall" in learner.error and "learn for longer" in learner.error


def test_scene_model_members_share_the_training_cap(
    aihub2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where an unsaved model trains
    frames, _ = _frames(aihub2)
    settings = {**FAST, "epochs": 2, "posture_flows": 1, "posture_epochs": 1}
    learner = SceneLearner("hall", LearnSettings(seconds=3600, members=2, **settings))
    for f in frames[:3000]:
        learner.add(f, fps=30.0)
    learner.input_ended()
    assert learner.wait(timeout=600)
    learned = learner.poll()
    assert learned is not None, learner.error
    model = learned.checkpoint.model
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert learned.info["members"] == 2
    assert learned.info["scene_epochs"] == 4  # two epochs of each member's
    assert learned.checkpoint.meta["train_config"]["max_minutes"] == 2.5  # a half of the cap
    assert learned.info["posture_flows"] == 1 and np.isfinite(learned.threshold)
    assert not list(tmp_path.iterdir())  # unsaved: nothing is left on disk once loaded


TINY = {**FAST, "epochs": 1, "hidden": 16, "flow_layers": 1, "members": 1, "posture_flows": 1}

# A service bounds its heap (pipelines.service_base); its cold start trains in a child
# process that keeps its freed heap memory. Run in a process of its own: bounding the pytest
# process would slow every later training test (tests/forecasting/test_allocator.py).
_BOUNDED_SERVICE_LEARNS = """
import json, os, sys
from detector.datasets import load_split
from detector.pose import frames_from_tracks
from forecasting.allocator import bound_heap_growth, retain_freed_memory
from pipelines.learning import LearnSettings, SceneLearner

assert bound_heap_growth()
clip = load_split(sys.argv[1], "test")[0]
frames = frames_from_tracks(clip.tracks, "hall", (1920, 1080), fps=30.0)[:1500]
learner = SceneLearner("hall", LearnSettings(seconds=3600, **json.loads(sys.argv[2])))
for f in frames:
    learner.add(f, fps=30.0)
learner.input_ended()
assert learner.wait(timeout=600)
learned = learner.poll()
assert learned is not None, learner.error
print(json.dumps({"info": learned.info, "service_retains": retain_freed_memory()}))
"""


def test_a_bounded_service_trains_its_scene_in_a_child_that_keeps_its_heap(
    aihub2: Path,
) -> None:
    import json
    import subprocess
    import sys

    args = [sys.executable, "-c", _BOUNDED_SERVICE_LEARNS, str(aihub2), json.dumps(TINY)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["service_retains"] is False  # the service's heap stays bounded
    assert out["info"]["heap_retained"] == 1.0  # the training child kept its freed memory
    assert out["info"]["posture_flows"] == 1 and out["info"]["scene_epochs"] == 1


def test_a_training_process_that_dies_fails_its_camera_with_the_reason(aihub2: Path) -> None:
    import multiprocessing
    import os
    import signal
    import time

    frames, _ = _frames(aihub2)
    learner = SceneLearner("hall", LearnSettings(seconds=3600, **{**TINY, "epochs": 50}))
    for f in frames[:3000]:
        learner.add(f, fps=30.0)
    learner.input_ended()
    assert learner.phase == "training"
    deadline = time.monotonic() + 120
    children: list[multiprocessing.process.BaseProcess] = []
    while not children and time.monotonic() < deadline:
        children = [p for p in multiprocessing.active_children() if p.name == "learn-hall"]
        time.sleep(0.05)
    assert len(children) == 1, "no training child process appeared"
    assert children[0].pid != os.getpid()
    os.kill(children[0].pid, signal.SIGKILL)  # as the kernel's OOM killer would
    assert learner.wait(timeout=120)
    assert learner.poll() is None and learner.phase == "failed"
    assert learner.error is not None
    assert "'hall'" in learner.error and "killed by SIGKILL" in learner.error, learner.error
    assert "out of memory" in learner.error


def test_a_graceful_stop_ends_training_without_failing_the_camera(
    aihub2: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import multiprocessing
    import time

    frames, _ = _frames(aihub2)
    learner = SceneLearner("hall", LearnSettings(seconds=3600, **{**TINY, "epochs": 50}))
    for f in frames[:3000]:
        learner.add(f, fps=30.0)
    learner.input_ended()
    time.sleep(1.0)  # the child is starting or training
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipelines.learning"):
        learner.close()
        assert learner.wait(timeout=30)
    assert time.monotonic() - t0 < 10  # the wait loop checks the stop every 0.5 s
    assert learner.phase == "training" and learner.error is None  # stopped, not failed
    assert learner.poll() is None
    assert not [p for p in multiprocessing.active_children() if p.name == "learn-hall"]
    assert "training stopped with the service" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_error_in_the_training_child_reaches_the_service_with_its_type(
    tmp_path: Path,
) -> None:
    import time

    from forecasting.torch_model import ModelConfig
    from forecasting.train import TrainConfig
    from forecasting.windows import WindowConfig, Windows
    from pipelines.scene_training import SceneJob, run_scene_job

    rng = np.random.default_rng(0)
    n, length = 64, WindowConfig().length
    w = Windows(
        rng.normal(size=(n, length, 17, 2)).astype(np.float32),
        np.ones((n, length, 17), bool),
        np.ones((n, length, 17), bool),
        np.tile(np.array([100.0, 100.0, 50.0], np.float32), (n, 1)),
        np.arange(n, dtype=np.int64),
        np.zeros(n, np.int64),
    )
    (tmp_path / "a-file").write_text("not a directory")
    job = SceneJob(
        path=tmp_path / "a-file" / "hall.pt",  # saving it fails in the child
        train=w,
        val=w,
        model=ModelConfig(hidden=8, flow_layers=1),
        train_cfg=TrainConfig(1, seed=0, normal_only=False, device="cpu"),
        windows=WindowConfig(),
        posture=None,
        deadline=time.monotonic() + 60,
        extra={},
        threads=1,
    )
    with pytest.raises(RuntimeError, match=r"Error: .*a-file"):
        run_scene_job(job, "learn-bad", timeout=300)


def test_the_childs_log_records_and_warnings_are_logged_by_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import multiprocessing

    from pipelines import scene_training

    recv, send = multiprocessing.Pipe(duplex=False)
    handler = scene_training._PipeHandler(send)
    handler.setFormatter(logging.Formatter())
    child_log = logging.getLogger("forecasting.train.child-test")
    child_log.propagate = False
    child_log.addHandler(handler)
    try:
        child_log.warning("members %d", 3)
    finally:
        child_log.removeHandler(handler)
    kind, fields = recv.recv()
    assert kind == "log" and fields["msg"] == "members 3" and fields["levelno"] == logging.WARNING
    child_log.propagate = True
    with caplog.at_level(logging.INFO):
        scene_training._log_record(fields)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("forecasting.train.child-test", "members 3")
    ]


def test_training_directories_left_by_a_killed_service_are_removed_when_stale(
    tmp_path: Path,
) -> None:
    import os
    import time

    from pipelines.learning import _remove_stale_work

    old, fresh = tmp_path / ".learn-old", tmp_path / ".learn-fresh"
    for d in (old, fresh):
        d.mkdir()
        (d / "hall.pt").write_bytes(b"half a model")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    _remove_stale_work(tmp_path, age=1800)  # 30 minutes: the old one is past it
    assert not old.exists() and (fresh / "hall.pt").exists()  # a running training's is kept


def test_a_saved_scene_model_with_per_speed_motion_statistics_is_learned_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Scene models saved before cold start measured its motion part pooled (session 28)
    are learned again, not reused; one saved as today's learner saves it is reused."""
    from forecasting.checkpoint import attach_posture, load_checkpoint, update_checkpoint
    from forecasting.posture import PostureConfig, PostureModel
    from pipelines.serving import calibration_record, scorer_config
    from tests.conftest import tiny_checkpoint

    settings = LearnSettings(save_dir=tmp_path, **FAST)
    caplog.set_level(logging.INFO)
    for per_speed in (True, False):
        path = tiny_checkpoint(tmp_path / "hall.pt")
        cfg = PostureConfig(flows=1, steps=1, speed_conditioned=per_speed)
        attach_posture(path, PostureModel(cfg).eval())
        ck = load_checkpoint(path)
        sc = scorer_config(ck, settings.scorer, settings.sampler, settings.samples, settings.batch)
        assert sc.name == "fused"
        update_checkpoint(path, calibration={"threshold": 1.0, **calibration_record(ck, sc)})
        caplog.clear()
        learner = SceneLearner("hall", settings)
        relearned = any("motion statistics are fitted per speed" in r.getMessage()
                        for r in caplog.records)  # fmt: skip
        assert relearned == per_speed
        assert learner.phase == ("learning" if per_speed else "training")
        assert (learner.poll() is None) == per_speed
