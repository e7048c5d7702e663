"""The score stage, the model provider and the run / score services' shared path, with
synthetic PoseFrames and a small (untrained) forecaster: no YOLO, no broker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detector.pose import Person, PoseFrame
from forecasting.checkpoint import load_checkpoint, save_checkpoint, update_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER
from pipelines.config import CameraConfig, ForecasterConfig, PosewatchConfig
from pipelines.learning import ColdStartProvider, LearnSettings
from pipelines.model_provider import CheckpointProvider, served_model
from pipelines.run_service import Service
from pipelines.score_service import ScoreService
from pipelines.score_stage import ScoreStage, frame_seed
from pipelines.serving import (
    RuntimeConfigError,
    ServingSpec,
    calibration_record,
    resolve_threshold,
    scorer_config,
)
from tests.conftest import tiny_checkpoint
from tests.realworld import vtest_frames, write_video

SAMPLES = 8


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """Tiny models: one thread (two threads on a busy 2-core machine spin-wait, ~100x
    slower per call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def walker(rng: np.random.Generator, n: int, x0: float, jump_at: int | None) -> np.ndarray:
    """``(n, 17, 3)`` pixel keypoints of a person walking right at 2 px/frame; from
    ``jump_at`` on the joints jitter by tens of pixels per frame (an anomaly)."""
    base = np.stack([np.linspace(-20, 20, 17), np.linspace(-80, 80, 17)], -1)
    out = np.empty((n, 17, 3), np.float32)
    for t in range(n):
        kp = base + np.array([x0 + 2.0 * t, 400.0]) + rng.normal(0, 0.5, (17, 2))
        if jump_at is not None and t >= jump_at:
            kp += rng.normal(0, 25, (17, 2))
        out[t, :, :2] = kp
        out[t, :, 2] = 0.9
    return out


def synthetic_frames(n: int = 110, cameras: tuple[str, ...] = ("gate", "lawn")) -> list[PoseFrame]:
    """Frames of 2 cameras (interleaved), 2 persons each; person 2 turns erratic at frame 60,
    person 1 of ``gate`` leaves at frame 40 (its track is later lost)."""
    rng = np.random.default_rng(7)
    frames = []
    for c, cam in enumerate(cameras):
        people = {1: walker(rng, n, 100 + 50 * c, None), 2: walker(rng, n, 600, 60)}
        for t in range(n):
            persons = []
            for tid, kp in people.items():
                if cam == "gate" and tid == 1 and t >= 40:
                    continue
                k = kp[t]
                box = np.r_[k[:, :2].min(0) - 5, k[:, :2].max(0) + 5].astype(np.float32)
                persons.append(Person(tid, box, 0.9, k.copy()))
            frames.append(PoseFrame(cam, t, t / 10.0, (1280, 720), persons))
    frames.sort(key=lambda f: (f.frame_index, f.camera))
    return frames


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tests.conftest.tiny_checkpoint`, one per test module."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt")


def config(ckpt: Path, **forecaster: Any) -> PosewatchConfig:
    return PosewatchConfig.model_validate(
        {
            "cameras": {"gate": {"source": "gate.mp4"}, "lawn": {"source": "lawn.mp4"}},
            "forecaster": {"checkpoint": str(ckpt), "samples": SAMPLES, "stride": 2, **forecaster},
            "alerting": {"min_duration_s": 0.2, "update_interval_s": 1.0, "cooldown_s": 0.5},
            "kafka": {"bootstrap_servers": ["127.0.0.1:9"]},  # never contacted here
            "metrics": {"enabled": False},
            "outputs": {"alerts_jsonl": None},
        }
    )


def calibrate(ckpt: Path, threshold: float, **scorer: Any) -> None:
    """Store a calibration fitted for the given serving configuration."""
    ck = load_checkpoint(ckpt)
    args = {"scorer": "minhde", "sampler": DEFAULT_SAMPLER, "samples": SAMPLES, **scorer}
    sc = scorer_config(ck, args["scorer"], args["sampler"], args["samples"])
    update_checkpoint(ckpt, calibration={"threshold": threshold, **calibration_record(ck, sc)})


def percentile_threshold(ckpt: Path, frames: list[PoseFrame], q: float) -> float:
    cfg = config(ckpt)
    cfg.alerting.threshold = 0.0
    stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
    smoothed = [s.smoothed for out in stage.process(frames) for s in out.scores]
    assert len(smoothed) > 100
    return float(np.percentile(smoothed, q))


def test_run_and_score_paths_give_identical_scores_and_alert_ids(tiny_ckpt: Path) -> None:
    frames = synthetic_frames()
    thr = percentile_threshold(tiny_ckpt, frames, 60)
    calibrate(tiny_ckpt, thr)
    run = Service(config(tiny_ckpt))
    score = ScoreService(config(tiny_ckpt))
    assert run.provider.model_for("gate") is not None
    run_scores: dict[tuple[str, int, int], float] = {}
    run_alerts: list[tuple[str, str]] = []
    for i in range(0, len(frames), 3):  # batches mixing cameras, as the detect stage gives
        for out in run.handle_poses(frames[i : i + 3]):
            run_scores.update({(s.camera, s.track_id, s.frame_index): s.smoothed
                               for s in out.scores})  # fmt: skip
            run_alerts += [(a.alert_id, a.type) for a in out.alerts]
    score_scores: dict[tuple[str, int, int], float] = {}
    score_alerts: list[tuple[str, str]] = []
    for offset, f in enumerate(frames):
        scored = score.score_frame(f, "poses[0]", offset)
        score_scores.update({(s.camera, s.track_id, s.frame_index): s.smoothed
                             for s in scored.scores})  # fmt: skip
        score_alerts += [(a.alert_id, a.type) for a in scored.alerts]
    assert len(run_scores) > 120
    assert run_scores.keys() == score_scores.keys()
    for k, v in run_scores.items():
        assert score_scores[k] == pytest.approx(v, rel=1e-6, abs=1e-6)
    assert sum(t == "new" for _, t in run_alerts) >= 2  # the comparison is not vacuous
    assert sorted(run_alerts) == sorted(score_alerts)
    # A frame's seed is the same wherever it is scored.
    assert frame_seed("gate", 5) == frame_seed("gate", 5) != frame_seed("lawn", 5)


def test_batch_seeding_scores_differ_from_frame_seeding(tiny_ckpt: Path) -> None:
    frames = synthetic_frames(60)
    out: dict[str, dict[tuple[str, int, int], float]] = {}
    for seeding in ("frame", "batch"):
        cfg = config(tiny_ckpt, seeding=seeding)
        cfg.alerting.threshold = 0.0
        stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting, seeding)
        out[seeding] = {(s.camera, s.track_id, s.frame_index): s.score
                        for o in stage.process(frames) for s in o.scores}  # fmt: skip
    assert out["frame"].keys() == out["batch"].keys() and len(out["frame"]) > 40
    diff = [abs(out["frame"][k] - out["batch"][k]) for k in out["frame"]]
    assert max(diff) > 1e-4  # the setting is honoured: other seeds, other draws


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small GRU-NF members with random weights: early stopping needs several."""
    from forecasting.torch_model import Ensemble

    path = tiny_checkpoint(tmp_path_factory.mktemp("ens") / "member.pt")
    ck = load_checkpoint(path)
    members = []
    for seed in range(3):
        m = load_checkpoint(path).model
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        members.append(m)
    return save_checkpoint(path.with_name("ens.pt"), Ensemble(members).eval(), ck.window_config)  # type: ignore[arg-type]


def test_frames_batched_in_one_call_score_as_one_frame_at_a_time(tiny_ensemble: Path) -> None:
    """One model call for many frames (frame seeding, early stop on) gives each person the
    score and each episode the alerts of feeding the frames one by one; the exact
    member-by-member path gives the same scores without early stop."""
    frames = synthetic_frames(110)  # gate's person 1 is lost at frame 100
    thr = percentile_threshold(tiny_ensemble, frames, 70)
    results = {}
    for label, exact, margin, batch in (
        ("one call", False, 0.1, len(frames)),
        ("one by one", False, 0.1, 1),
        ("exact", True, None, 1),
        ("stacked", False, None, 7),
    ):
        cfg = config(tiny_ensemble, exact=exact, early_stop_margin=margin)
        cfg.alerting.threshold = thr
        stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
        outs = [o for i in range(0, len(frames), batch) for o in stage.process(frames[i : i + batch])]  # fmt: skip
        results[label] = (
            {(s.camera, s.track_id, s.frame_index): s.smoothed for o in outs for s in o.scores},
            [(a.alert_id, a.type, a.frame_index) for o in outs for a in o.alerts],
            [(o.poses.camera, o.poses.frame_index, o.lost) for o in outs if o.lost],
        )
    scores, alerts, lost = results["one call"]
    assert len(scores) > 100 and sum(t == "new" for _, t, _ in alerts) >= 2 and lost
    for label in ("one by one", "exact", "stacked"):
        other = results[label]
        assert other[0].keys() == scores.keys(), label
        if label in ("one by one",):
            assert other[1] == alerts and other[2] == lost
            for k, v in scores.items():
                assert other[0][k] == pytest.approx(v, abs=1e-5)
    exact, stacked = results["exact"][0], results["stacked"][0]
    for k, v in exact.items():
        assert stacked[k] == pytest.approx(v, abs=1e-5)
    # Early stop (margin 0.1: ~3 standard deviations of this model's scores) raises only
    # scores that stay below the threshold: no smoothed score crosses it.
    early = results["one call"][0]
    assert any(early[k] > exact[k] + 1e-4 for k in exact)  # some windows did stop early
    assert all((early[k] > thr) == (exact[k] > thr) for k in exact)


def test_stage_scores_at_stride_ends_lost_tracks_and_closes_episodes(tiny_ckpt: Path) -> None:
    cfg = config(tiny_ckpt)
    cfg.alerting.threshold = -1e9  # every scored person alerts
    stage = ScoreStage(CheckpointProvider(cfg, warmup=False), cfg.alerting)
    frames = synthetic_frames(130, ("gate",))
    outs = stage.process(frames)
    assert [o.poses for o in outs] == frames  # one result per frame, in order
    span = 1 + 12 + 12  # window length of the default WindowConfig
    person2 = [s.frame_index for o in outs for s in o.scores if s.track_id == 2]
    assert person2[0] == span - 1 and np.all(np.diff(person2) == 2)  # stride 2
    assert all(o.threshold == -1e9 for o in outs)
    types = [(a.track_id, a.type, a.frame_index) for o in outs for a in o.alerts]
    assert any(t[:2] == (1, "new") for t in types) and any(t[:2] == (2, "new") for t in types)
    # Person 1 left at frame 40: forgotten 61 frames after its last sighting, episode ended.
    lost_at = [o.poses.frame_index for o in outs if 1 in o.lost]
    assert lost_at == [39 + 61]
    ends = [a for o in outs for a in o.alerts if a.track_id == 1 and a.type == "end"]
    # last scored at frame 38 (stride 2 from 24), ended at the frame it was forgotten
    assert len(ends) == 1 and ends[0].last_ts == pytest.approx(3.8)
    assert ends[0].end_ts == pytest.approx(10.0)
    assert 2 in outs[-1].alerting and 1 not in outs[-1].alerting
    closing = stage.close(99.0)
    assert [(a.track_id, a.type, a.end_ts) for a in closing] == [(2, "end", 99.0)]


def test_cold_start_cameras_learn_instead_of_scoring(tiny_ckpt: Path) -> None:
    cfg = config(tiny_ckpt)
    cfg.forecaster.checkpoint = None
    cfg.cold_start.learn_minutes = 60
    provider = ColdStartProvider(cfg, ["gate", "lawn"])
    stage = ScoreStage(provider, cfg.alerting)
    outs = stage.process(synthetic_frames(30), {"gate": 10.0, "lawn": 10.0})
    assert all(o.scores == [] and o.threshold is None for o in outs)
    assert stage.phase("gate") == "learning"
    assert provider.learners["gate"].collected_seconds() == pytest.approx(2.9)
    assert stage.poll_models() == []


def test_threshold_for_another_sampler_k_or_model_is_refused(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    calibrate(tiny_ckpt, 1.5)  # fitted for minhde, the checkpoint's sampler (gru-snf-t0.8), K 8
    ck = load_checkpoint(tiny_ckpt)
    assert resolve_threshold(config(tiny_ckpt), ck) == 1.5
    with pytest.raises(RuntimeConfigError) as e:
        resolve_threshold(config(tiny_ckpt, sampler="gru-nf"), ck)
    msg = str(e.value)
    assert "sampler gru-snf-t0.8, K 8" in msg and "sampler gru-nf, K 8" in msg
    assert "sampler gru-snf-t0.8 != gru-nf" in msg and "posewatch calibrate" in msg
    with pytest.raises(RuntimeConfigError, match=r"K 8 != 16") as e:
        resolve_threshold(config(tiny_ckpt, samples=16), ck)
    assert "K 8," in str(e.value) and "K 16," in str(e.value)
    # An explicit alerting.threshold is the operator's choice: no check.
    cfg = config(tiny_ckpt, samples=16)
    cfg.alerting.threshold = 2.0
    assert resolve_threshold(cfg, ck) == 2.0
    # The same calibration copied onto other weights: refused, naming both models.
    other = tmp_path / "other.pt"
    with torch.no_grad():
        for p in ck.model.parameters():
            p.add_(0.01)
    save_checkpoint(other, ck.model, ck.window_config)
    update_checkpoint(other, calibration=ck.calibration)
    with pytest.raises(RuntimeConfigError, match=r"model [0-9a-f]{12} != [0-9a-f]{12}"):
        resolve_threshold(config(other), load_checkpoint(other))
    # Services refuse at start, before any camera or broker is touched.
    with pytest.raises(RuntimeConfigError, match=r"sampler gru-snf-t0\.8 != gru-nf"):
        Service(config(tiny_ckpt, sampler="gru-nf"))
    with pytest.raises(RuntimeConfigError, match="K 8 != 16"):
        ScoreService(config(tiny_ckpt, samples=16))


def test_calibrate_cold_start_and_serving_default_to_the_same_sampler() -> None:
    import inspect

    from pipelines import cli
    from pipelines.offline.evaluation import CalibrateRequest

    assert ForecasterConfig().sampler == DEFAULT_SAMPLER
    assert LearnSettings().sampler == DEFAULT_SAMPLER
    assert CalibrateRequest.__dataclass_fields__["sampler"].default == DEFAULT_SAMPLER
    assert inspect.signature(cli.calibrate).parameters["sampler"].default == DEFAULT_SAMPLER
    cfg = PosewatchConfig.model_validate({"cameras": {"a": {"source": "a.mp4"}}})
    assert LearnSettings.from_config(cfg).sampler == cfg.forecaster.sampler
    assert LearnSettings.from_config(cfg).samples == cfg.forecaster.samples


def test_cold_start_reuses_a_saved_scene_model_only_if_calibrated_for_what_is_served(
    tiny_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved scene model is served with its threshold when its calibration was fitted for
    the configured scorer, sampler, K and model; otherwise the camera learns again."""
    import shutil

    caplog.set_level(logging.INFO)
    saved = tmp_path / "models"
    saved.mkdir()
    shutil.copy(tiny_ckpt, saved / "gate.pt")
    calibrate(saved / "gate.pt", -1e9)  # the served configuration: every person alerts
    shutil.copy(tiny_ckpt, saved / "lawn.pt")
    calibrate(saved / "lawn.pt", 1.0, sampler="gru-nf")  # what the old cold start wrote
    cfg = config(tiny_ckpt)
    cfg.forecaster.checkpoint = None
    cfg.cold_start.save_dir = saved
    provider = ColdStartProvider(cfg, ["gate", "lawn"])
    stage = ScoreStage(provider, cfg.alerting)
    assert stage.poll_models() == ["gate"]
    assert (stage.phase("gate"), stage.phase("lawn")) == ("scoring", "learning")
    assert any("lawn" in r.getMessage() and "sampler gru-nf != gru-snf-t0.8" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    model = provider.model_for("gate")
    assert model is not None and model.threshold == -1e9
    assert model.spec == ServingSpec.from_calibration(model.checkpoint.calibration)
    outs = stage.process(synthetic_frames(40), {"gate": 10.0, "lawn": 10.0})
    gate = [o for o in outs if o.poses.camera == "gate"]
    lawn = [o for o in outs if o.poses.camera == "lawn"]
    assert sum(len(o.scores) for o in gate) > 10 and all(o.threshold == -1e9 for o in gate)
    assert any(a.type == "new" for o in gate for a in o.alerts)
    assert all(o.scores == [] and o.threshold is None for o in lawn)
    assert provider.learners["lawn"].collected_seconds() == pytest.approx(3.9)


def test_an_unfitted_threshold_is_served_with_a_warning_that_says_what_to_do(
    tiny_ckpt: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A threshold that calibration could not fit (too little normal footage: capped, or
    cold start's highest held-out score) still serves, but the operator is told it may miss
    events and how to fit a real one; a fitted one, a bare threshold and a configured one
    are served quietly."""
    import shutil

    from forecasting.calibration import Calibration

    ckpt = shutil.copy(tiny_ckpt, tmp_path / "m.pt")

    def warnings(method: str | None, configured: float | None = None, **kw: Any) -> list[str]:
        calibrate(ckpt, 7.5)  # a bare threshold (and what it was fitted for)
        if method is not None:
            cal = Calibration(7.5, 1.0, method, 30.0, 15, 0.04)
            rec = load_checkpoint(ckpt).calibration
            update_checkpoint(ckpt, calibration={**rec, **cal.to_dict()})
        caplog.clear()
        cfg = config(ckpt)
        cfg.alerting.threshold = configured
        model = served_model(load_checkpoint(ckpt), cfg, **kw)
        assert model.threshold == (7.5 if configured is None else configured)
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    caplog.set_level(logging.INFO)
    (capped,) = warnings("capped")
    assert capped.startswith("model ") and "threshold 7.500 was not fitted" in capped
    assert "2.4 normal minutes" in capped and "1 false alert per camera-hour" in capped
    assert "may miss real events" in capped and "posewatch calibrate --all-clips" in capped
    (held,) = warnings("holdout-max", camera="gate")
    assert held.startswith("gate: ") and "the highest held-out score" in held
    assert warnings("empirical") == [] and warnings("extrapolated") == []
    assert warnings(None) == []  # a bare threshold: nothing to say, and no crash
    assert warnings("capped", configured=3.0) == []  # alerting.threshold is not the fit's


def test_unknown_sampler_is_a_config_error_naming_the_choices(
    tiny_ckpt: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeConfigError, match=r"unknown sampler 'fast'; choose from default"):
        Service(config(tiny_ckpt, sampler="fast"))


def test_a_camera_is_offline_until_it_delivers_a_frame(tiny_ckpt: Path) -> None:
    calibrate(tiny_ckpt, 1.0)
    run = Service(config(tiny_ckpt))
    assert (run.phase("gate"), run.phase("lawn")) == ("offline", "offline")
    run.handle_poses([f for f in synthetic_frames(3) if f.camera == "gate"])
    assert (run.phase("gate"), run.phase("lawn")) == ("scoring", "offline")


def test_the_run_summary_counts_each_cameras_frames_skipped_for_detect_fps(
    tiny_ckpt: Path, videos: Path, tmp_path: Path
) -> None:
    """A 60 fps camera detected at 30 fps: the service's summary (what ``posewatch run``
    prints) says 60 of its 120 frames were skipped and none dropped; a camera whose frames
    were all detected is not named."""
    fast = write_video(tmp_path / "fast.avi", vtest_frames(videos, 120, width=96), "MJPG", 60.0)
    slow = write_video(tmp_path / "slow.avi", vtest_frames(videos, 12, width=96), "MJPG", 10.0)
    cfg = config(tiny_ckpt)
    cfg.alerting.threshold = 1.0
    cfg.cameras = {
        "gate": CameraConfig.model_validate({"source": str(fast), "detect_fps": 30}),
        "lawn": CameraConfig.model_validate({"source": str(slow)}),
    }
    run = Service(cfg)
    run.init_cameras()
    for src in run.sources.values():  # started by init_cameras
        with pytest.raises(RuntimeError, match="reader is already started"):
            src.start()
        while not src.done:
            src.read(timeout=0.2)
    run.stop_cameras()
    assert run.summary.skipped == {"gate": 60, "lawn": 0}
    assert run.summary.dropped == {"gate": 0, "lawn": 0}
    assert run.summary.not_detected() == (
        "frames not detected: gate: 0 dropped (to keep up), 60 skipped (detect_fps)"
    )
