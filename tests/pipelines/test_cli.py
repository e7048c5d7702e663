import json
from pathlib import Path

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
