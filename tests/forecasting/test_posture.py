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
    read_checkpoint_file,
    save_checkpoint,
    update_checkpoint,
    write_checkpoint_file,
)
from forecasting.detection_metrics import roc_auc
from forecasting.posture import (
    COCO_EDGES,
    GraphGlow,
    PostureConfig,
    fit_normal_stats,
    flow_inputs,
    train_posture,
    yaw_squash,
)
from forecasting.scoring import (
    ScorerConfig,
    available_scorers,
    posture_of,
    resolve_scorer,
    score_windows,
    score_windows_many,
)
from forecasting.stillness import past_log_speed, stillness
from forecasting.torch_model import GRUNF, ModelConfig
from forecasting.windows import Standardizer, WindowConfig, Windows, augment_flip, fill_unseen
from pipelines.config import PosewatchConfig
from pipelines.offline.evaluation import normal_window_sets
from pipelines.serving import RuntimeConfigError, resolve_threshold
from tests.conftest import held_out_clips


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


def test_posture_config_round_trip_and_older_checkpoints() -> None:
    """A config survives its checkpoint dict; flows saved before the upright turn score as
    they were fitted (upright 0, the key absent), and so do session 12's upright flows (axis
    over every frame); one saved with session 12's removed roll augmentation loads."""
    cfg = PostureConfig()
    assert cfg.upright == 30.0 and PostureConfig.from_dict(cfg.to_dict()) == cfg
    plain = PostureConfig(upright=0.0)
    assert "upright" not in plain.to_dict()
    assert PostureConfig.from_dict(plain.to_dict()) == plain
    assert PostureConfig.from_dict({**cfg.to_dict(), "roll": 20.0}) == cfg
    session12 = {k: v for k, v in cfg.to_dict().items() if k != "upright_frames"}
    assert PostureConfig.from_dict(session12) == PostureConfig(upright_frames=0)
    observed = PostureConfig(upright_frames=12)
    assert PostureConfig.from_dict(observed.to_dict()) == observed
    with pytest.raises(TypeError):
        PostureConfig.from_dict({**cfg.to_dict(), "tilt": 1.0})  # unknown: not silently dropped
    # flows trained before the yaw augmentation (session 20) say they were trained without it
    assert cfg.yaw == 60.0 and PostureConfig.from_dict(cfg.to_dict()).yaw == 60.0
    before_yaw = {k: v for k, v in cfg.to_dict().items() if k != "yaw"}
    assert PostureConfig.from_dict(before_yaw) == PostureConfig(yaw=0.0)


def test_yaw_augmentation_narrows_bodies_as_a_turn_toward_side_on_would() -> None:
    """Training windows seen turned about the vertical axis by up to ``yaw`` degrees (flat
    body): horizontal coordinates scaled by cos(theta), vertical ones and the centre kept."""
    torch.manual_seed(0)
    x = torch.randn(4000, 2, 24, 17)
    y = yaw_squash(x, 60.0)
    scale = (y[:, 0] / x[:, 0]).flatten(1)
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), atol=1e-4)  # one per window
    s = scale[:, 0]
    assert float(s.min()) >= 0.5 - 1e-6 and float(s.max()) <= 1.0 + 1e-6
    # theta uniform in [0, 60 degrees]: E[cos theta] = sin(60 deg) / (pi / 3) = 0.827
    assert float(s.mean()) == pytest.approx(0.827, abs=0.01)
    assert torch.equal(y[:, 1], x[:, 1])


def test_upright_turn_is_measured_on_the_observed_frames(
    real_windows: tuple[Windows, Windows, Standardizer],
) -> None:
    """A body that tips over by 25 degrees in the future frames keeps that tilt in the flows'
    input when the axis is measured on the observed frames (``upright_frames`` 12), and
    loses half of it when it is measured on the whole window (0, the default): its own fall
    turned it back."""
    _, va, std = real_windows
    poses = fill_unseen(va.poses, std.pose_mean)
    n_obs = 1 + WindowConfig().t_obs
    tipped = poses.copy()
    tipped[:, n_obs:] = _rotate(poses[:, n_obs:], np.radians(25.0))
    upright = _axis_degrees(flow_inputs(torch.as_tensor(poses), PostureConfig(upright=0.0)))
    walkers = np.abs(upright) < 5  # the turn stays inside its limit for these

    def future_tilt(cfg: PostureConfig) -> float:
        x = flow_inputs(torch.as_tensor(tipped), cfg)[walkers]
        fut = x[:, :, n_obs - 1 :]  # the flows see window frames 1..24
        return float(np.median(_axis_degrees(fut)))

    assert future_tilt(PostureConfig(upright_frames=n_obs - 1)) == pytest.approx(25.0, abs=1.5)
    assert future_tilt(PostureConfig(upright_frames=0)) == pytest.approx(12.5, abs=2.0)


def _axis_degrees(x: torch.Tensor) -> np.ndarray:
    """Each flow input's mean body axis (hip centre to shoulder centre), degrees from up."""
    # COCO-17 shoulders 5, 6 and hips 11, 12, written out: independent of turn_upright's
    axis = (x[..., [5, 6]].mean(-1) - x[..., [11, 12]].mean(-1)).mean(-1)
    return np.degrees(torch.atan2(axis[:, 0], -axis[:, 1]).numpy())


def test_turn_upright_undoes_a_camera_roll_but_leaves_a_lying_body_lying(
    real_windows: tuple[Windows, Windows, Standardizer],
) -> None:
    """Flow inputs with ``upright`` (30 degrees): real held-out windows turned by a camera
    roll of +-15 degrees give the inputs of the unturned windows; a body turned 90 degrees
    (lying) is turned back by the limit only."""
    _, va, std = real_windows
    poses = fill_unseen(va.poses, std.pose_mean)
    cfg = PostureConfig(upright=30.0)

    def inputs(angle_deg: float, c: PostureConfig = cfg) -> torch.Tensor:
        return flow_inputs(torch.as_tensor(_rotate(poses, np.radians(angle_deg))), c)

    lean = _axis_degrees(inputs(0.0, PostureConfig(upright=0.0)))
    walkers = np.abs(lean) < 15  # the turn is exact for these at +-15 with a 30 limit
    assert walkers.mean() > 0.95  # this camera: median lean 5.6 degrees, 99th pct 15.4
    base = inputs(0.0)
    assert np.abs(_axis_degrees(base)[walkers]).max() < 1e-3
    for deg in (-15.0, 15.0):
        turned = float(np.median(_axis_degrees(inputs(deg, PostureConfig(upright=0.0))) - lean))
        assert turned == pytest.approx(deg, abs=0.5)  # the roll is there without upright
        np.testing.assert_allclose(inputs(deg)[walkers].numpy(), base[walkers].numpy(), atol=1e-4)
    lying = np.abs(_axis_degrees(inputs(90.0)))[walkers]
    assert lying.min() > 90 - 30 - 15  # turned back by at most the limit: still lying


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
    sets = normal_window_sets(aihub2, held_out_clips(aihub2), WindowConfig(), 9, 6, test=False)
    return sets["train"], sets["validation"], Standardizer.fit(sets["train"])


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
    seen, n_obs = va.visible & va.mask, 1 + WindowConfig().t_obs
    fit_normal_stats(model, normal_poses, motion, seen, n_obs)
    with torch.no_grad():
        normal, joints = model(torch.as_tensor(normal_poses))
        lying, _ = model(torch.as_tensor(_rotate(normal_poses, np.pi / 2)))
        still = stillness(torch.as_tensor(normal_poses), torch.as_tensor(seen), n_obs)
        speed = past_log_speed(torch.as_tensor(normal_poses), torch.as_tensor(seen), n_obs)
        fused = model.fuse(torch.as_tensor(motion, dtype=torch.float32), normal, still, speed)
        with pytest.raises(ValueError, match="needs the windows' stillness"):
            model.fuse(torch.as_tensor(motion, dtype=torch.float32), normal, None, speed)
        with pytest.raises(ValueError, match="needs the windows' past speed"):
            model.fuse(torch.as_tensor(motion, dtype=torch.float32), normal, still)
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
    fit_normal_stats(posture, poses, rng.normal(0, 1, 40), ones, 13)
    attach_posture(path, posture)
    ck = load_checkpoint(path)
    assert resolve_scorer("auto", ck.model) == "fused"  # flows with the stillness term
    # Flows saved before the stillness term load without it, and `auto` keeps minhde.
    meta, tensors = read_checkpoint_file(path)
    meta["posture"] = {k: v for k, v in meta["posture"].items() if k != "stillness"}
    tensors = {k: v for k, v in tensors.items() if ".still_" not in k}
    old = load_checkpoint(write_checkpoint_file(tmp_path / "old.pt", meta, tensors))
    old_posture = posture_of(old.model)
    assert old_posture is not None and not old_posture.cfg.stillness
    assert resolve_scorer("auto", old.model) == "minhde"
    assert resolve_scorer("fused", old.model) == "fused"  # asked for by name: as before
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
    frozen = poses.copy()
    frozen[:5, 13:] = frozen[:5, 12:13]  # five bodies stop dead after the observed frames
    many = score_windows_many(ck.model, frozen, ones, ones, cfg, ("minhde", "posture", "fused"))
    with torch.no_grad():
        want = posture(torch.as_tensor(frozen))[0].numpy()
    np.testing.assert_allclose(many["posture"].score, want, rtol=1e-5, atol=1e-6)
    speed = past_log_speed(torch.as_tensor(frozen), torch.as_tensor(ones), 13)
    z = posture.motion_z(torch.as_tensor(many["minhde"].score), speed).numpy()
    still = posture.still_excess(stillness(torch.as_tensor(frozen), torch.as_tensor(ones), 13))
    assert float(still[:5].min()) > 10  # log(motion / 1e-4) over a spread of random jitter
    assert float((still[5:] == 0).float().mean()) > 0.9  # the others: at most their hinge
    want_fused = z + 0.5 * want + still.numpy()
    np.testing.assert_allclose(many["fused"].score, want_fused, rtol=1e-4, atol=1e-5)
    # Re-attaching replaces the flows; the forecaster's own weights are untouched.
    attach_posture(path, train_posture(poses, poses[:10], PostureConfig(flows=1, epochs=1), 1))
    again = load_checkpoint(path)
    assert again.meta["posture"]["flows"] == 1
    for k, v in ck.model.state_dict().items():
        if not k.startswith("posture."):
            assert torch.equal(v, again.model.state_dict()[k])


def test_stacked_flows_equal_the_flows_one_by_one_and_follow_new_weights() -> None:
    """Inference goes through :class:`StackedFlows` (Toeplitz matrices instead of the slow
    1-2 channel convolutions); it gives the flow-by-flow NLLs and joint energies up to float
    rounding, and is rebuilt when the weights change (new flows loaded in place)."""
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.3, (64, 25, 17, 2)).astype(np.float32)
    cfg = PostureConfig(flows=3, epochs=2)
    a = train_posture(poses, poses[:16], cfg, 0)
    b = train_posture(poses, poses[:16], cfg, 1)
    x = a.inputs(torch.as_tensor(poses))
    for model in (a, b):
        with torch.no_grad():
            want, want_j = model.flow_nll_one_by_one(x)
            got, got_j = model.flow_nll(x)
        assert got.shape == (3, 64) and got_j.shape == (64, 17)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_j.numpy(), want_j.numpy(), rtol=1e-4, atol=1e-5)
        short = x[:, :, -17:]  # windows shorter than the flows' frames (t_obs 8, horizon 8)
        with torch.no_grad():
            got_short = model.flow_nll(short)[0]
            want_short = model.flow_nll_one_by_one(short)[0]
        np.testing.assert_allclose(got_short.numpy(), want_short.numpy(), rtol=0, atol=1e-4)
    with torch.no_grad():
        before = a.flow_nll(x)[0]
        a.load_state_dict(b.state_dict())  # in place: the stacked weights must follow
        after = a.flow_nll(x)[0]
        want_b = b.flow_nll_one_by_one(x)[0]
    assert float((before - after).abs().max()) > 1e-3
    np.testing.assert_allclose(after.numpy(), want_b.numpy(), rtol=0, atol=1e-4)


def test_posture_training_stops_at_its_deadline_with_at_least_one_flow() -> None:
    """Cold start trains the flows within its time limit: past the deadline no further flow
    is started, and the model says how many it holds."""
    import time

    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.3, (32, 25, 17, 2)).astype(np.float32)
    model = train_posture(
        poses, poses[:8], PostureConfig(flows=4, epochs=1), 0, None, time.monotonic()
    )
    assert model.cfg.flows == 1 and len(model.flows) == 1
    # the flow kept is the first one, trained from the seed it has without a deadline
    alone = train_posture(poses, poses[:8], PostureConfig(flows=4, epochs=1), 0).flows[0]
    for k, v in alone.state_dict().items():
        assert torch.equal(v, model.flows[0].state_dict()[k]), k
    ones = np.ones((32, 25, 17), bool)
    fit_normal_stats(model, poses, rng.normal(0, 1, 32), ones, 13)
    assert model.nll_mean.shape == (1,)
    with torch.no_grad():
        assert model(torch.as_tensor(poses))[0].shape == (32,)
