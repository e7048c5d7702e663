import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

runner = CliRunner()


def test_data_summary_json(aihub2: Path) -> None:
    res = runner.invoke(app, ["data", "summary", str(aihub2), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["train"]["person_frames"] == 37_336
    assert out["test"]["label_frames"] == 35_992
    assert round(out["test"]["anomalous_fraction"] * 100, 1) == 44.8


def test_data_summary_table_and_errors(aihub2: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "summary", str(aihub2), "--split", "test"])
    assert res.exit_code == 0
    assert "36,428" in res.output and "44.8%" in res.output and "train" not in res.output
    bad = runner.invoke(app, ["data", "summary", str(tmp_path)])
    assert bad.exit_code == 1
    assert "not a pose dataset" in bad.output


def test_offline_requests_default_to_the_command_line_defaults() -> None:
    from dataclasses import MISSING, fields

    import typer

    from pipelines.offline.evaluation import CalibrateRequest, EvaluateRequest
    from pipelines.offline.training import ForecastEvalRequest, TrainRequest

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name, request in (
        ("train", TrainRequest),
        ("forecast-eval", ForecastEvalRequest),
        ("evaluate", EvaluateRequest),
        ("calibrate", CalibrateRequest),
    ):
        cli = {p.name: p.default for p in commands[name].params}
        compared = 0
        for f in fields(request):
            if f.name in cli and f.default is not MISSING:
                assert cli[f.name] == f.default, (name, f.name)
                compared += 1
        assert compared >= 4, name


@pytest.fixture(scope="module")
def cold_start_sized(aihub2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-clip dataset (a real AIHub2 test clip) and an untrained model of cold start's
    size (4 flow layers, so 5 in the generative path: fewer than the 7 of a trained one)."""
    import torch

    from forecasting.checkpoint import save_checkpoint
    from forecasting.torch_model import GRUNF, ModelConfig
    from forecasting.train import build_windows
    from forecasting.windows import Standardizer, WindowConfig
    from pipelines.tracks import load_tracks

    root = tmp_path_factory.mktemp("one_clip")
    clip = sorted((aihub2 / "pose" / "test").glob("*.json"))[0]
    (root / "pose" / "test").mkdir(parents=True)
    (root / "pose" / "test" / clip.name).symlink_to(clip)
    (root / "gt").symlink_to(aihub2 / "gt")
    wcfg = WindowConfig()
    windows = build_windows(load_tracks(root, "test"), wcfg, 8, normal_only=True)
    torch.manual_seed(0)
    mcfg = ModelConfig(hidden=16, flow_layers=4, flow_hidden=16, embed_dim=8)
    model = GRUNF(mcfg, Standardizer.fit(windows))
    return root, save_checkpoint(root / "tiny.pt", model, wcfg)


def test_forecast_eval_on_a_cold_start_sized_model(
    cold_start_sized: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = cold_start_sized
    out = tmp_path / "forecast.json"
    args = ["forecast-eval", "--model", str(model), "--data", str(data), "-k", "2"]
    res = runner.invoke(app, [*args, "--stride", "64", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "normal windows of test (stride 64), K = 2" in res.output
    result = json.loads(out.read_text())
    samplers = result["samplers"]
    assert samplers["snf-interp-tempered0.5-L"]["blocks"] == [5]  # the model's layer count
    assert len(samplers) == 12  # default_samplers and the model's own, gru-snf-t0.8
    assert samplers["gru-snf-t0.8"]["temperature"] == 0.8
    counts = set()
    for row in result["rows"]:  # the rank histogram: K + 1 ranks over every visible coordinate
        hist = row["rank_histogram"]
        assert len(hist) == 3 and sum(hist) > 1000
        counts.add(sum(hist))  # the same coordinates for every sampler
        # K = 2: ranks 0 and 2 are outside the two futures' range, rank 1 the middle half
        assert row["outside"] == pytest.approx((hist[0] + hist[2]) / sum(hist))
        assert row["middle_half"] == pytest.approx(hist[1] / sum(hist))
        assert row["middle_half_calibrated"] == pytest.approx(1 / 3)
        # distances are finite and positive: two different futures are apart (APD), and
        # the best of them still misses a real future (minADE <= minFDE is not implied)
        assert row["windows"] > 0 and row["K"] == 2
        assert 0 < row["min_ade"] < 10 and 0 < row["min_fde"] < 10 and row["apd"] > 0
    assert len(counts) == 1
    assert "out%" in res.output and "mid%" in res.output
    bad = runner.invoke(app, [*args, "--sampler", "nope"])
    assert bad.exit_code == 1 and "choose from default, gru-nf" in bad.output


def test_calibrate_stores_what_the_threshold_is_valid_for(
    cold_start_sized: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    from forecasting.checkpoint import load_checkpoint

    data, original = cold_start_sized
    model = shutil.copy(original, tmp_path / "m.pt")
    common = ["--model", str(model), "--data", str(data), "--split", "test", "-k", "2"]
    res = runner.invoke(app, ["calibrate", *common, "--stride", "8"])
    assert res.exit_code == 0, res.output
    assert "false alerts per camera-hour" in res.output and f"stored in {model}" in res.output
    ck = load_checkpoint(model)
    cal = ck.calibration
    assert cal["model"] == ck.model_id(posture=False) and cal["stride"] == 8
    assert cal["scorer"]["name"] == "minhde" and cal["scorer"]["num_samples"] == 2
    assert cal["scorer"]["sampler"] == ck.sampler.to_dict()  # default: the checkpoint's own
    assert cal["sigma_causal"] == 6.0 and math.isfinite(cal["threshold"])
    # a threshold that could only be capped is said loudly, with what to do
    assert ("was not fitted (method capped)" in res.output) == (cal["method"] == "capped")
    # evaluate reports the stored threshold for exactly that configuration, not for gru-nf
    out = tmp_path / "eval"
    res = runner.invoke(
        app, ["evaluate", *common, "--stride", "8", "--scorer", "minhde", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "AUC off" in res.output
    reports = json.loads((out / "evaluation.json").read_text())["reports"]
    calibrated = {r["sampler"]: r["calibrated"] is not None for r in reports}
    assert calibrated == {"gru-nf": False, "default": True}


def test_calibrate_on_the_footage_of_the_camera_the_model_will_serve(
    cold_start_sized: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    from forecasting.checkpoint import load_checkpoint, update_checkpoint

    data, original = cold_start_sized
    model = shutil.copy(original, tmp_path / "m.pt")
    clip = next((data / "pose" / "test").iterdir())
    site = tmp_path / "site"  # pose files of one camera (as `posewatch extract` writes), no labels
    (site / "pose" / "gate").mkdir(parents=True)
    (site / "pose" / "gate" / clip.name).symlink_to(clip.resolve())
    common = ["calibrate", "--model", str(model), "--data", str(site), "--split", "gate", "-k", "2"]
    res = runner.invoke(app, [*common, "--stride", "8"])
    assert res.exit_code == 1 and "label" in res.output  # not a labelled dataset
    res = runner.invoke(app, [*common, "--stride", "8", "--all-clips"])
    assert res.exit_code == 0, res.output
    cal = load_checkpoint(model).calibration
    n = json.loads(clip.read_text())  # every frame of the unlabelled clip is normal footage
    last = max(int(f) for person in n.values() for f in person)
    assert cal["hours"] == pytest.approx((last + 1) / 30.0 / 3600, rel=0.01)
    # With labels, their anomalous frames are left out: the same clip in the labelled
    # dataset (43% anomalous) gives fewer normal hours. The checkpoint's validation clips
    # (named in it) are not what --all-clips fits on.
    update_checkpoint(model, validation_clips=["another_scene"])
    labelled = [*common[:3], "--data", str(data), "--split", "test", "-k", "2", "--stride", "8"]
    res = runner.invoke(app, labelled)
    assert res.exit_code == 1 and "no validation clips" in res.output
    assert "--all-clips" in res.output
    res = runner.invoke(app, [*labelled, "--all-clips"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(model).calibration["hours"] < 0.7 * cal["hours"]
