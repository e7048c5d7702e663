"""Posture flows: exact log-likelihood, standardisation, a lying body is unlikely, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import (
    attach_posture,
    load_checkpoint,
    save_checkpoint,
    update_checkpoint,
)
from forecasting.detection_metrics import roc_auc
from forecasting.posture import (
    COCO_EDGES,
    GraphGlow,
    PostureConfig,
    fit_normal_stats,
    train_posture,
)
from forecasting.scoring import (
    ScorerConfig,
    available_scorers,
    resolve_scorer,
    score_windows,
    score_windows_many,
)
from forecasting.torch_model import GRUNF, ModelConfig
from forecasting.train import build_windows, split_clips
from forecasting.windows import Standardizer, WindowConfig, Windows, augment_flip, fill_unseen
from pipelines.config import PosewatchConfig
from pipelines.serving import RuntimeConfigError, resolve_threshold
from pipelines.tracks import load_tracks


def test_log_determinant_equals_the_jacobian() -> None:
    torch.manual_seed(0)
    model = GraphGlow(17, COCO_EDGES, 24)
    model.train()
    model(torch.randn(64, 2, 24, 17))  # data-dependent ActNorm initialisation
    model.eval()
    with torch.no_grad():  # a trained-looking state: couplings far from the identity
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(1, 2, 24, 17)
    _, logdet = model.transform(x)
    jac = torch.autograd.functional.jacobian(
        lambda v: model.transform(v.reshape(1, 2, 24, 17))[0].reshape(-1), x.reshape(-1)
    )
    sign, ref = torch.linalg.slogdet(jac.double())
    assert float(sign) > 0
    assert float(logdet[0].detach()) == pytest.approx(
        float(ref), abs=1e-3 * max(1.0, abs(float(ref)))
    )
    # The per-window NLL is the prior's energy minus the log-det, per dimension.
    with torch.no_grad():
        prior, nll = model.energy(x)
    want = (prior.sum() + 0.5 * np.log(2 * np.pi) * x.numel() - logdet[0].detach()) / x.numel()
    assert float(nll[0]) == pytest.approx(float(want), rel=1e-5)


def _rotate(poses: np.ndarray, angle: float) -> np.ndarray:
    """Every frame of normalised windows rotated about the origin (a body lying down)."""
    c, s = np.cos(angle), np.sin(angle)
    out = poses.copy()
    out[..., 0] = c * poses[..., 0] - s * poses[..., 1]
    out[..., 1] = s * poses[..., 0] + c * poses[..., 1]
    return out


@pytest.fixture(scope="module")
def real_windows(aihub2: Path) -> tuple[Windows, Windows, Standardizer]:
    """Normal windows of AIHub2 train: training clips (stride 6) and held-out clips (stride 9)."""
    wcfg = WindowConfig()
    tracks = load_tracks(aihub2, "train")
    tr_clips, va_clips = split_clips([t.clip for t in tracks], 0.2, 0)
    tr = build_windows([t for t in tracks if t.clip in tr_clips], wcfg, 6, True)
    va = build_windows([t for t in tracks if t.clip in va_clips], wcfg, 9, True)
    return tr, va, Standardizer.fit(tr)


@pytest.mark.slow
def test_posture_flows_find_lying_bodies_and_standardise(
    real_windows: tuple[Windows, Windows, Standardizer],
) -> None:
    """Two small flows on real normal windows: held-out normal scores are standardised
    (mean ~0, std ~1), and held-out windows turned 90 degrees (a body lying down throughout,
    moving as before) score higher: AUC > 0.95 (measured 1.000)."""
    tr, va, std = real_windows
    tr = Windows.concat([tr, augment_flip(tr, list(FLIP_INDEX))])
    cfg = PostureConfig(flows=2, epochs=3)
    model = train_posture(
        fill_unseen(tr.poses, std.pose_mean), fill_unseen(va.poses, std.pose_mean), cfg, 0
    )
    normal_poses = fill_unseen(va.poses, std.pose_mean)
    motion = np.random.default_rng(0).normal(2.0, 0.5, len(va))
    fit_normal_stats(model, normal_poses, motion)
    with torch.no_grad():
        normal, joints = model(torch.as_tensor(normal_poses))
        lying, _ = model(torch.as_tensor(_rotate(normal_poses, np.pi / 2)))
        fused = model.fuse(torch.as_tensor(motion, dtype=torch.float32), normal)
        z = (model.flow_nll(model.inputs(torch.as_tensor(normal_poses)))[0]).numpy()
    z = (z - model.nll_mean.numpy()[:, None]) / model.nll_std.numpy()[:, None]
    np.testing.assert_allclose(z.mean(1), 0, atol=1e-3)
    np.testing.assert_allclose(z.std(1), 1, atol=1e-2)
    assert float(joints.mean()) == pytest.approx(1.0, rel=1e-3)  # 1 = typical per joint
    assert float(fused.mean()) == pytest.approx(0.0, abs=1e-2)
    assert float(fused.std()) == pytest.approx(np.sqrt(2), rel=0.15)  # two unit-spread parts
    labels = np.r_[np.zeros(len(normal)), np.ones(len(lying))]
    auc = roc_auc(labels, np.r_[normal.numpy(), lying.numpy()])
    print(f"lying AUC {auc:.3f} over {len(normal)} windows")
    assert auc > 0.95


def test_checkpoint_keeps_posture_flows_and_scorers_need_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    L = 25
    poses = rng.normal(0, 0.3, (40, L, 17, 2)).astype(np.float32)
    ones = np.ones((40, L, 17), bool)
    w = Windows(poses, ones, ones, np.ones((40, 3), np.float32), np.zeros(40, np.int64),
                np.zeros(40, np.int64))  # fmt: skip
    std = Standardizer.fit(w)
    torch.manual_seed(0)
    model = GRUNF(ModelConfig(hidden=16, flow_layers=2, flow_hidden=16, embed_dim=8), std).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, WindowConfig())
    with pytest.raises(ValueError, match=r"no posture flows.*posewatch posture"):
        score_windows(model, poses, ones, ones, ScorerConfig(name="fused", num_samples=2))
    assert resolve_scorer("auto", model) == "minhde"
    assert "fused" not in available_scorers(model)
    with pytest.raises(ValueError, match=r"'posture' needs posture flows.*posewatch posture"):
        resolve_scorer("posture", model)
    with pytest.raises(ValueError, match=r"unknown scorer 'best'; choose from auto, minhde"):
        resolve_scorer("best", model)
    posture = train_posture(poses, poses[:10], PostureConfig(flows=2, epochs=1, weight=0.5), 0)
    fit_normal_stats(posture, poses, rng.normal(0, 1, 40))
    attach_posture(path, posture)
    ck = load_checkpoint(path)
    assert resolve_scorer("auto", ck.model) == "minhde"
    assert available_scorers(ck.model)[-2:] == ("posture", "fused")
    # A threshold calibrated for minhde is not used for fused scores (different units).
    update_checkpoint(path, calibration={"threshold": 1.0, "scorer": {"name": "minhde"}})
    cfg_fused = PosewatchConfig.model_validate(
        {
            "cameras": {"gate": {"source": "gate.mp4"}},
            "forecaster": {"checkpoint": str(path), "scorer": "fused"},
        }
    )
    with pytest.raises(RuntimeConfigError, match=r"calibrated for the minhde scorer, not fused"):
        resolve_threshold(cfg_fused, load_checkpoint(path))
    cfg_minhde = cfg_fused.model_copy(
        update={"forecaster": cfg_fused.forecaster.model_copy(update={"scorer": "minhde"})}
    )
    assert resolve_threshold(cfg_minhde, load_checkpoint(path)) == 1.0
    cfg = ScorerConfig(num_samples=4)
    many = score_windows_many(ck.model, poses, ones, ones, cfg, ("minhde", "posture", "fused"))
    with torch.no_grad():
        want = posture(torch.as_tensor(poses))[0].numpy()
    np.testing.assert_allclose(many["posture"].score, want, rtol=1e-5, atol=1e-6)
    z = (many["minhde"].score - float(posture.motion_mean)) / float(posture.motion_std)
    np.testing.assert_allclose(many["fused"].score, z + 0.5 * want, rtol=1e-4, atol=1e-5)
    # Re-attaching replaces the flows; the forecaster's own weights are untouched.
    attach_posture(path, train_posture(poses, poses[:10], PostureConfig(flows=1, epochs=1), 1))
    again = load_checkpoint(path)
    assert again.meta["posture"]["flows"] == 1
    for k, v in ck.model.state_dict().items():
        if not k.startswith("posture."):
            assert torch.equal(v, again.model.state_dict()[k])
