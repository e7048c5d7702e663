"""Model files never run code: the safetensors checkpoint format, its round trip, the refusal
of pickled (old or crafted) files by every command and service, and `posewatch model
migrate` for checkpoints of earlier versions."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from typer.testing import CliRunner

from forecasting.checkpoint import (
    CHECKPOINT_FORMAT,
    HEADER_KEY,
    CheckpointError,
    load_checkpoint,
    model_fingerprint,
    read_checkpoint_file,
    save_checkpoint,
    update_checkpoint,
)
from forecasting.scoring import ScorerConfig, score_windows
from forecasting.snf import SNF_DEFAULT
from forecasting.torch_model import GRUNF, Ensemble, ModelConfig
from forecasting.windows import Standardizer, WindowConfig, Windows
from pipelines.cli import app

runner = CliRunner()
SMALL = ModelConfig(hidden=16, flow_layers=2, flow_hidden=16, embed_dim=8)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _windows(n: int = 24, seed: int = 0) -> Windows:
    rng = np.random.default_rng(seed)
    L = WindowConfig().length
    poses = rng.normal(0, 0.3, (n, L, 17, 2)).astype(np.float32)
    ones = np.ones((n, L, 17), bool)
    return Windows(poses, ones, ones, np.ones((n, 3), np.float32), np.zeros(n, np.int64),
                   np.zeros(n, np.int64))  # fmt: skip


def _model(seed: int = 0, members: int = 1) -> GRUNF | Ensemble:
    torch.manual_seed(seed)
    std = Standardizer.fit(_windows())
    nets = [GRUNF(SMALL, std) for _ in range(members)]
    for net in nets:  # non-trivial weights, also in the zero-initialised last layers
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return (Ensemble(nets) if members > 1 else nets[0]).eval()


def _old_format_save(path: Path, model: GRUNF | Ensemble, extra: dict[str, Any]) -> None:
    """What posewatch wrote before (format 1): a ``torch.save`` pickle of one dict."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "code_version": "0.1.0+gold",
        "model_config": model.cfg.to_dict(),
        "window_config": WindowConfig().to_dict(),
        "standardizer": model.standardizer().to_dict(),
        "members": len(model.member_list()) if isinstance(model, Ensemble) else 1,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": None,
        "history": [{"epoch": 1, "loss": 0.5}],
        "sampler": SNF_DEFAULT.to_dict(),
        "calibration": {},
        **extra,
    }
    torch.save(blob, path)


class _Boom:
    """A pickled object whose loading runs a shell command (touches ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path: Path) -> tuple[list[Path], Path]:
    """Two armed files (a torch.save zip posing as an old checkpoint, a bare pickle) and the
    marker file their loading would create."""
    marker = tmp_path / "PWNED"
    zipped = tmp_path / "evil.pt"
    torch.save(
        {"format": CHECKPOINT_FORMAT, "format_version": 1, "state_dict": {}, "x": _Boom(marker)},
        zipped,
    )
    bare = tmp_path / "evil-bare.pt"
    bare.write_bytes(pickle.dumps(_Boom(marker), protocol=2))
    return [zipped, bare], marker


def test_crafted_files_are_armed(tmp_path: Path) -> None:
    """The test files really run code when unpickled the old way (so the refusals below
    are not vacuous)."""
    (zipped, _), marker = _crafted(tmp_path)
    torch.load(zipped, weights_only=False)
    assert marker.exists()


def test_checkpoints_round_trip_bit_identically(tmp_path: Path) -> None:
    model = _model(members=2)
    first = save_checkpoint(tmp_path / "a.pt", model, WindowConfig(), extra={"fps": np.float32(25)})
    ck = load_checkpoint(first)
    ref = model.state_dict()
    meta, tensors = read_checkpoint_file(first)
    assert sorted(tensors) == sorted(ref) and len(tensors) > 20
    for name, t in ref.items():  # same dtype, shape and bytes
        got = tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape
        assert got.numpy().tobytes() == t.detach().numpy().tobytes(), name
    again = save_checkpoint(tmp_path / "b.pt", ck.model, ck.window_config)
    # The weight hash (calibrations store it) is the same before and after.
    assert ck.model_id() == model_fingerprint(model, posture=False)
    assert load_checkpoint(again).model_id() == ck.model_id()
    assert meta["format_version"] == 2 and meta["members"] == 2 and meta["fps"] == 25.0
    # Header updates keep the tensors bit for bit.
    update_checkpoint(first, calibration={"threshold": 1.25})
    meta2, tensors2 = read_checkpoint_file(first)
    assert meta2["calibration"] == {"threshold": 1.25}
    assert all(torch.equal(tensors2[k], tensors[k]) for k in tensors)
    # Something JSON cannot hold is refused, naming where it is.
    with pytest.raises(CheckpointError, match=r"meta\.extra_thing: a object cannot be stored"):
        save_checkpoint(tmp_path / "c.pt", model, WindowConfig(), extra={"extra_thing": object()})


def test_save_twice_writes_the_same_bytes(tmp_path: Path) -> None:
    model = _model()
    a = save_checkpoint(tmp_path / "a.pt", model, WindowConfig())
    b = save_checkpoint(tmp_path / "b.pt", load_checkpoint(a).model, WindowConfig())
    assert a.read_bytes() == b.read_bytes()


def test_foreign_and_old_files_get_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"without posewatch's header"):
        load_checkpoint(tmp_path / "other.safetensors")
    _old_format_save(tmp_path / "old.pt", _model(), {})
    with pytest.raises(CheckpointError, match=r"old\.pt: a checkpoint in the format of earlier"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"posewatch model migrate .*old\.pt NEW\.pt"):
        load_checkpoint(tmp_path / "old.pt")
    newer = save_checkpoint(tmp_path / "newer.pt", _model(), WindowConfig())
    meta, tensors = read_checkpoint_file(newer)
    newer.write_bytes(st_save(tensors, {HEADER_KEY: json.dumps({**meta, "format_version": 3})}))
    with pytest.raises(CheckpointError, match=r"checkpoint format 3 is not 2; upgrade posewatch"):
        load_checkpoint(newer)


def test_crafted_checkpoint_is_refused_by_every_command(tmp_path: Path) -> None:
    """`calibrate`, `evaluate`, `forecast-eval`, `posture`, `ensemble`, `run --model`,
    `model migrate`: each exits with an error naming the file, and the code never runs."""
    files, marker = _crafted(tmp_path)
    data = tmp_path / "data"  # never reached: the model is read first
    for evil in files:
        m = str(evil)
        commands = [
            ["calibrate", "--model", m, "--data", str(data)],
            ["evaluate", "--model", m, "--data", str(data), "--out", str(tmp_path / "ev")],
            ["forecast-eval", "--model", m, "--data", str(data)],
            ["posture", "--model", m],
            ["ensemble", "--model", m, "--model", m, "--out", str(tmp_path / "ens.pt")],
            ["run", "--source", str(tmp_path / "v.mp4"), "--model", m],
            ["model", "migrate", m, str(tmp_path / "migrated.pt")],
        ]
        for args in commands:
            res = runner.invoke(app, args)
            assert res.exit_code in (1, 2), (args, res.output)
            assert evil.name in res.output, (args, res.output)
            assert "refused" in res.output or "earlier posewatch versions" in res.output, (
                args,
                res.output,
            )
            assert not marker.exists(), args
    assert not (tmp_path / "migrated.pt").exists()


def test_crafted_checkpoint_is_refused_by_the_services_and_cold_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.config import PosewatchConfig
    from pipelines.learning import ColdStartProvider
    from pipelines.run_service import Service
    from pipelines.score_service import ScoreService
    from pipelines.serving import RuntimeConfigError

    (evil, _), marker = _crafted(tmp_path)

    def config(**kw: Any) -> PosewatchConfig:
        return PosewatchConfig.model_validate(
            {
                "cameras": {"gate": {"source": "gate.mp4"}},
                "kafka": {"bootstrap_servers": ["127.0.0.1:9"]},  # never contacted
                "metrics": {"enabled": False},
                "outputs": {"alerts_jsonl": None},
                **kw,
            }
        )

    for service in (Service, ScoreService):
        with pytest.raises(RuntimeConfigError, match=r"evil\.pt: a checkpoint in the format"):
            service(config(forecaster={"checkpoint": str(evil)}))
    assert not marker.exists()

    caplog.set_level(logging.INFO)
    saved = tmp_path / "scenes"
    saved.mkdir()
    (saved / "gate.pt").write_bytes(evil.read_bytes())
    provider = ColdStartProvider(config(cold_start={"save_dir": str(saved)}), ["gate"])
    assert provider.learners["gate"].phase == "learning"  # not reused: learns again
    assert provider.model_for("gate") is None
    msgs = [r.getMessage() for r in caplog.records if "gate.pt" in r.getMessage()]
    assert len(msgs) == 1 and "cannot reuse" in msgs[0] and "model migrate" in msgs[0], msgs
    assert not marker.exists()


def test_migrate_converts_an_old_checkpoint_that_then_scores_identically(tmp_path: Path) -> None:
    model = _model(seed=3)
    old = tmp_path / "old.pt"
    # Old calibrations could hold numpy scalars: torch's restricted unpickler accepts those.
    _old_format_save(old, model, {"calibration": {"threshold": 0.5, "fps": np.float64(12.5)}})
    new = tmp_path / "new.pt"
    res = runner.invoke(app, ["model", "migrate", str(old), str(new)])
    assert res.exit_code == 0, res.output
    assert "only do this for a file you trust" in res.output
    assert "checkpoint format 2" in res.output
    ck = load_checkpoint(new)
    assert ck.meta["migrated_from"] == {"format_version": 1, "file": "old.pt"}
    assert ck.calibration == {"threshold": 0.5, "fps": 12.5}
    ref = model.state_dict()
    for name, t in ck.model.state_dict().items():
        assert t.numpy().tobytes() == ref[name].numpy().tobytes(), name
    assert ck.model_id() == model_fingerprint(model, posture=False)
    w = _windows(16, seed=5)
    cfg = ScorerConfig("minhde", num_samples=6, seed=11)
    before = score_windows(model, w.poses, w.mask, w.visible, cfg).score
    after = score_windows(ck.model, w.poses, w.mask, w.visible, cfg).score
    assert before.shape == (16,) and np.isfinite(before).all()
    assert float(np.max(np.abs(before - after))) == 0.0
    # Once only: the new file, an existing target and a foreign file are refused.
    again = runner.invoke(app, ["model", "migrate", str(new), str(tmp_path / "x.pt")])
    assert again.exit_code == 1 and "already in checkpoint format 2" in again.output
    exists = runner.invoke(app, ["model", "migrate", str(old), str(new)])
    assert exists.exit_code == 1 and "new.pt: exists" in exists.output
    (tmp_path / "notes.txt").write_text("hello")
    foreign = runner.invoke(
        app, ["model", "migrate", str(tmp_path / "notes.txt"), str(tmp_path / "y.pt")]
    )
    assert foreign.exit_code == 1 and "not a readable checkpoint" in foreign.output


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("members", 1_000_000, r"says 1000000 ensemble members, the tensors hold 1"),
        ("model_config", {"hidden": 10**9}, r"model_config.hidden = 1000000000 is outside"),
        ("window_config", {"t_obs": 10**9}, r"window_config.t_obs = 1000000000 is outside"),
        ("posture", {"flows": 100_000}, r"posture.flows = 100000 is outside"),
        ("posture", {"flows": 4}, r"says 4 posture flows, the tensors hold None"),
    ],
)
def test_a_header_that_would_build_a_huge_model_is_refused(
    tmp_path: Path, field: str, value: Any, why: str
) -> None:
    """The model is built from the header before its tensors load: a crafted size must not
    exhaust memory."""
    path = save_checkpoint(tmp_path / "m.pt", _model(), WindowConfig())
    if field in ("model_config", "window_config"):
        value = {**read_checkpoint_file(path)[0][field], **value}
    update_checkpoint(path, **{field: value})
    with pytest.raises(CheckpointError, match=why):
        load_checkpoint(path)


def test_a_checkpoint_with_nan_weights_or_given_as_a_folder_is_refused(tmp_path: Path) -> None:
    from forecasting.checkpoint import write_checkpoint_file

    path = save_checkpoint(tmp_path / "m.pt", _model(), WindowConfig())
    meta, tensors = read_checkpoint_file(path)
    name = sorted(k for k, t in tensors.items() if t.is_floating_point())[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    write_checkpoint_file(path, meta, tensors)
    with pytest.raises(CheckpointError, match=r"1 tensors hold NaN or infinite values"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)
    res = runner.invoke(app, ["posture", "--model", str(tmp_path)])
    assert res.exit_code != 0 and "a folder, not a checkpoint file" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("bad", ["NaN", float("nan"), float("inf"), True, [1.0]])
def test_a_calibrated_threshold_that_is_not_a_finite_number_is_not_served(
    tmp_path: Path, bad: Any
) -> None:
    from pipelines.serving import RuntimeConfigError, threshold_for

    path = save_checkpoint(tmp_path / "m.pt", _model(), WindowConfig())
    update_checkpoint(path, calibration={"threshold": bad})
    with pytest.raises(RuntimeConfigError, match="not a finite number"):
        threshold_for(load_checkpoint(path), ScorerConfig(name="minhde"), None)
    assert threshold_for(load_checkpoint(path), ScorerConfig(name="minhde"), 2.5) == 2.5
