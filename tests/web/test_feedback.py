"""Operators' verdicts refine the threshold: the rule, re-scoring episodes with the model
being calibrated, ``posewatch calibrate --feedback`` and cold start's calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detector.pose import Track
from detector.posefiles import write_stgnf
from forecasting.calibration import Calibration
from forecasting.checkpoint import load_checkpoint
from pipelines.cli import app
from pipelines.config import PosewatchConfig
from pipelines.feedback import apply_feedback, episode_peak, fit_threshold
from pipelines.learning import LearnSettings, SceneLearner
from pipelines.serving import scorer_config
from pipelines.sinks.store import StoreSink
from tests.web.helpers import episode, tiny_checkpoint


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("calibrated", "false", "confirmed", "want"),
    [
        (1.0, [], [], 1.0),  # no verdicts: the calibration stands
        (1.0, [0.5], [], 1.0),  # already below: nothing to do
        (1.0, [1.5, 2.5], [], 2.5000025),  # above every false alert's peak
        (1.0, [1.5, 2.5], [2.0], 1.5000015),  # 2.5 cannot go without the confirmed 2.0
        (3.0, [], [2.0], 1.999998),  # a confirmed alert must still fire
        (1.0, [1.9999995], [2.0], 1.99999975),  # squeezed: between the two
    ],
)
def test_the_threshold_rule(
    calibrated: float, false: list[float], confirmed: list[float], want: float
) -> None:
    thr = fit_threshold(calibrated, false, confirmed)
    assert thr == pytest.approx(want, abs=1e-9)
    assert all(p <= thr for p in false if p < min(confirmed, default=np.inf))
    assert all(p > thr for p in confirmed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny model and an alert store with three episodes of different motion: gate's
    steady and shaky walkers and lawn's shakiest, each re-scored by the model."""
    tmp = tmp_path_factory.mktemp("feedback")
    ckpt = tiny_checkpoint(tmp / "tiny.pt")
    sink = StoreSink(tmp / "alerts.db")
    ids = {}
    for name, camera, jitter, track in (("calm", "gate", 0.5, 1), ("shaky", "gate", 6.0, 2),
                                        ("wild", "lawn", 20.0, 3)):  # fmt: skip
        for alerts, view in episode(camera, n=80, start=20, stop=70, jitter=jitter, track=track):
            for a in alerts:
                sink.publish(a, view)
                ids[name] = a.alert_id
            sink.frame(view)
    sink.close()
    ck = load_checkpoint(ckpt)
    sc = scorer_config(ck, "minhde", "default", 4)
    from pipelines.sinks.store import AlertStore

    db = AlertStore(tmp / "alerts.db")
    peaks = {k: episode_peak(ck, sc, db.poses(v) or [], 6.0, 1) for k, v in ids.items()}
    db.close()
    return {"tmp": tmp, "ckpt": ckpt, "ck": ck, "scorer": sc, "ids": ids, "peaks": peaks,
            "db": tmp / "alerts.db"}  # fmt: skip


def mark(db_path: Path, **verdicts: str) -> None:
    from pipelines.sinks.store import AlertStore

    db = AlertStore(db_path)
    for aid, v in verdicts.items():
        db.set_verdict(aid, v)
    db.close()


def test_verdicts_are_rescored_by_the_model_being_calibrated(setup: dict[str, Any]) -> None:
    p, ids = setup["peaks"], setup["ids"]
    assert all(v is not None for v in p.values())
    assert p["calm"] < p["shaky"] < p["wild"]  # more shaking, higher scores
    mark(setup["db"], **{ids["shaky"]: "false_alert", ids["calm"]: "confirmed",
                         ids["wild"]: "false_alert"})  # fmt: skip
    low = p["calm"] - 1.0  # a calibration that lets all three alert
    # gate: the shaky false alert is above the calm confirmed one: it cannot be silenced;
    # the threshold stays where the confirmed one still fires.
    out = apply_feedback(low, setup["ck"], setup["scorer"], setup["db"], "gate", 6.0, 1)
    assert (out.false_alerts, out.silenced, out.confirmed, out.kept) == (1, 0, 1, 1)
    assert out.threshold == low and out.rescored == 2
    mark(setup["db"], **{ids["calm"]: "false_alert", ids["shaky"]: "confirmed"})
    out = apply_feedback(low, setup["ck"], setup["scorer"], setup["db"], "gate", 6.0, 1)
    assert (out.false_alerts, out.silenced, out.confirmed, out.kept) == (1, 1, 1, 1)
    assert p["calm"] <= out.threshold < p["shaky"]
    assert "1 false alerts, 1 of them now below the threshold; 1 confirmed, 1 still above" in (
        out.note()
    )
    # Every camera: lawn's wild false alert is above gate's confirmed one: kept below it.
    every = apply_feedback(low, setup["ck"], setup["scorer"], setup["db"], None, 6.0, 1)
    assert (every.false_alerts, every.silenced, every.kept) == (2, 1, 1)
    assert every.threshold == out.threshold
    # Verdicts on another model's alerts without poses are skipped (their scores are not
    # this model's).
    none = apply_feedback(low, setup["ck"], setup["scorer"], None, "gate", 6.0, 1)
    assert none.threshold == low and none.false_alerts == 0


def write_dataset(root: Path) -> Path:
    """Four clips of two people walking (pose/train; labels all normal)."""
    rng = np.random.default_rng(1)
    (root / "pose" / "train").mkdir(parents=True)
    (root / "gt").mkdir()
    for c in range(4):
        tracks = {}
        for tid in (1, 2):
            n = 400
            kp = np.zeros((n, 17, 3), np.float32)
            t = np.arange(n)[:, None]
            kp[:, :, 0] = np.linspace(100, 140, 17)[None] + (1.5 + 0.5 * tid) * t + 60 * c
            kp[:, :, 1] = np.linspace(100, 340, 17)[None] + 30 * tid
            kp[:, :, :2] += rng.normal(0, 1.5 + c, (n, 17, 2))
            kp[:, :, 2] = 0.9
            tracks[tid] = Track.from_rows(tid, {i: (kp[i], 0.9) for i in range(n)})
        write_stgnf(root / "pose" / "train" / f"clip{c}.json", tracks)
        np.save(root / "gt" / f"clip{c}.npy", np.zeros(400, np.uint8))
    return root


def test_calibrate_with_feedback_and_cold_start_use_the_verdicts(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    ids, p = setup["ids"], setup["peaks"]
    mark(setup["db"], **{ids["calm"]: "false_alert", ids["shaky"]: "confirmed"})
    data = write_dataset(tmp_path / "data")
    args = ["calibrate", "--model", str(setup["ckpt"]), "--data", str(data), "-k", "4",
            "--target-rate", "1000", "--fps", "10", "--min-duration", "3"]  # fmt: skip
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0, plain.output
    base = load_checkpoint(setup["ckpt"]).calibration["threshold"]
    res = CliRunner().invoke(app, [*args, "--feedback", str(setup["db"]), "--camera", "gate"])
    assert res.exit_code == 0, res.output
    cal = load_checkpoint(setup["ckpt"]).calibration
    assert cal["calibrated_threshold"] == pytest.approx(base)
    assert cal["threshold"] == pytest.approx(fit_threshold(base, [p["calm"]], [p["shaky"]]))
    assert (cal["feedback_false_alerts"], cal["feedback_confirmed"]) == (1, 1)
    assert "verdicts: 1 false alerts" in res.output
    missing = CliRunner().invoke(app, [*args, "--feedback", str(tmp_path / "nope.db")])
    assert missing.exit_code == 1 and "no alert store at" in missing.output
    # Cold start: the learner of camera gate calibrates with gate's verdicts.
    cfg = PosewatchConfig.model_validate(
        {"cameras": {"gate": {"source": "g.mp4"}}, "outputs": {"store": str(setup["db"])},
         "forecaster": {"samples": 4, "stride": 1}}
    )  # fmt: skip
    settings = LearnSettings.from_config(cfg)
    assert settings.store == setup["db"]
    learner = SceneLearner("gate", settings, lambda ck: setup["scorer"])
    low = Calibration(p["calm"] - 1.0, 1.0, "empirical", 10.0, 3, 1.0)
    after, record = learner._feedback(low, setup["ck"], setup["scorer"])
    assert p["calm"] <= after.threshold < p["shaky"]
    assert record["feedback_silenced"] == 1 and record["calibrated_threshold"] == low.threshold
