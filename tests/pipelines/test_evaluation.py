"""How `posewatch evaluate` groups scorers into passes over a split, and how it treats labels
that stop before the poses (issue 19)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.datasets import DatasetError
from detector.pose import Track
from forecasting.calibration import Calibration
from forecasting.checkpoint import save_checkpoint
from forecasting.torch_model import ModelConfig
from forecasting.train import TrackArrays, TrainConfig, build_windows, train
from forecasting.windows import WindowConfig
from pipelines.clip_scoring import ClipScores
from pipelines.offline.evaluation import EvaluateRequest, report, run_evaluate, scoring_passes
from tests.realworld import clip_piece, write_dataset


def test_sample_scorers_share_a_pass_per_sampler_and_nll_runs_once() -> None:
    passes = scoring_passes(["nll", "kde", "minhde"], ["gru-nf", "gru-snf"])
    assert passes == [
        ("gru-nf", ("minhde", "kde")),
        ("gru-snf", ("minhde", "kde")),
        (None, ("nll",)),
    ]
    assert scoring_passes(["nll"], ["gru-nf", "gru-snf"]) == [(None, ("nll",))]
    assert scoring_passes(["minfde"], []) == []
    # fused needs futures (its motion part); posture alone needs none and runs with nll.
    assert scoring_passes(["posture", "fused", "nll"], ["gru-nf"]) == [
        ("gru-nf", ("fused",)),
        (None, ("nll", "posture")),
    ]


def test_an_unknown_scorer_is_named_before_anything_is_scored() -> None:
    with pytest.raises(ValueError, match=r"'mindist'.*choose from minhde"):
        scoring_passes(["minhde", "mindist"], ["gru-nf"])


# -- issue 19 item 3: labels shorter than the poses ---------------------------------------------


@pytest.fixture(scope="module")
def short_labels(aihub2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real test clips cut to frames 1600-2199 (anomalies from about 200 on) with only
    their first 300 labels; the same clips cut at 300 frames with those labels; a tiny model."""
    tmp = tmp_path_factory.mktemp("short_labels")
    short, cut = {}, {}
    for i in (2, 3):
        name, tracks, labels = clip_piece(aihub2, "test", i, 1600, 2200)
        assert labels[:300].any() and not labels[:300].all()  # both classes are labelled
        short[name] = (tracks, labels[:300])
        rows = {t: {f: r for f, r in tr.rows().items() if f < 300} for t, tr in tracks.items()}
        cut[name] = ({t: Track.from_rows(t, r) for t, r in rows.items() if r}, labels[:300])
    wcfg = WindowConfig(t_obs=8, horizon=6)
    arrays = [
        TrackArrays(n, t.keypoints, t.frames) for n, (ts, _) in short.items() for t in ts.values()
    ]
    w = build_windows(arrays, wcfg, stride=4, normal_only=False)
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=16, flow_layers=2, flow_hidden=16, embed_dim=8)
    torch.set_num_threads(1)
    res = train(
        w, w.select(np.arange(0)), mcfg, TrainConfig(epochs=1, batch_size=64), progress=False
    )
    return {
        "short": write_dataset(tmp / "short", "test", short),
        "cut": write_dataset(tmp / "cut", "test", cut),
        "model": save_checkpoint(tmp / "tiny.pt", res.model, wcfg, TrainConfig(epochs=1)),
        "tmp": tmp,
    }


def _nll(paths: dict[str, Path], data: str, out: str, **kw: object) -> dict:
    req = EvaluateRequest(
        paths["model"], paths[data], scorers=("nll",), out=paths["tmp"] / out, progress=False, **kw
    )
    return run_evaluate(req)


def test_labels_shorter_than_the_poses_stop_evaluate_before_scoring(
    short_labels: dict[str, Path],
) -> None:
    with pytest.raises(
        DatasetError,
        match=r"labels .* cover 300 frames \(0 to 299\) but its poses .* cover 600 \(0 to 599\)",
    ):
        _nll(short_labels, "short", "refused")
    assert not (short_labels["tmp"] / "refused").exists()


def test_labelled_only_scores_exactly_the_labelled_frames(short_labels: dict[str, Path]) -> None:
    got = _nll(short_labels, "short", "labelled", labelled_only=True)
    ref = _nll(short_labels, "cut", "cut")  # the clips as if filmed for 300 frames only
    assert got["frames"] == ref["frames"] == 2 * 300
    a, b = got["reports"][0], ref["reports"][0]
    assert 0.0 < a["auc_offline"] < 1.0
    for key in ("auc_offline", "auc_causal", "auc_raw", "ap_offline", "ap_causal"):
        assert a[key] == b[key], key


def test_evaluate_command_refuses_short_labels_and_scores_them_with_the_option(
    short_labels: dict[str, Path],
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    args = ["evaluate", "--model", str(short_labels["model"]), "--data", str(short_labels["short"])]
    args += ["--scorer", "nll", "--out", str(short_labels["tmp"] / "cli")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    assert "cover 300 frames (0 to 299) but its poses" in r.stderr and "--labelled-only" in r.stderr
    r = CliRunner().invoke(app, [*args, "--labelled-only"])
    assert r.exit_code == 0, r.output
    assert (
        "scoring its 300 labelled frames only; frames 300 to 599 have poses but no labels"
        in r.stderr
    )


def test_reports_count_alerts_by_the_rule_the_service_alerts_and_calibrates_with() -> None:
    # 30 fps: one 10-frame blip in normal footage (shorter than the service's 0.5 s), and
    # a 40-frame run inside the anomalous event. Scores are the smoothing's input: sigma 0.
    frames = np.zeros(3000)
    labels = np.zeros(3000)
    frames[500:510] = 5.0  # a blip: no alert in the service
    frames[2000:2040] = 5.0
    labels[1900:2200] = 1.0
    clips = [ClipScores("c", frames, labels)]
    rep = report("s", "-", clips, 0.0, 0.0, 30.0, 1.0, 1)
    top = rep.recall[0]  # 1 false alert per hour
    assert top["event_recall"] == 1.0 and top["false_per_hour"] == 0.0
    # The calibrated threshold is checked under the rule it was fitted for.
    for min_duration, false in ((15, 0), (1, 1)):
        cal = Calibration(2.0, 1.0, "empirical", 30.0, min_duration, 1.0)
        rep = report("s", "-", clips, 0.0, 0.0, 30.0, 1.0, 1, cal)
        assert rep.calibrated is not None
        assert rep.calibrated["test_false_alerts"] == false
        assert rep.calibrated["test_event_recall"] == 1.0


def test_calibrate_warns_when_the_threshold_could_not_be_fitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`posewatch calibrate` stores a capped threshold (the service can run on it) and says
    loudly that it was not fitted, and what to do; a fitted one is stored quietly."""
    import logging

    import pipelines.offline.evaluation as ev
    from forecasting.checkpoint import load_checkpoint
    from forecasting.defaults import DEFAULT_SAMPLER
    from pipelines.serving import scorer_config
    from tests.conftest import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "m.pt")
    sc = scorer_config(load_checkpoint(path), "minhde", DEFAULT_SAMPLER, 2)
    caplog.set_level(logging.INFO)
    for method in ("capped", "extrapolated"):
        cal = Calibration(18.6, 1.0, method, 30.0, 15, 0.04)
        monkeypatch.setattr(ev, "fit_calibration", lambda ckpt, req, cal=cal: (cal, sc, 2))
        caplog.clear()
        assert ev.run_calibrate(ev.CalibrateRequest(path, tmp_path)).method == method
        stored = load_checkpoint(path).calibration
        assert stored["method"] == method and stored["threshold"] == 18.6
        notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if method == "capped":
            (note,) = notes
            assert "18.600 was not fitted (method capped)" in note and "--all-clips" in note
        else:
            assert notes == []
