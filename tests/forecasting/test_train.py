import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import load_checkpoint, save_checkpoint
from forecasting.snf import CHECKPOINT_SAMPLER, SNF_DEFAULT
from forecasting.torch_model import GRUNF, Ensemble, ModelConfig, to_tensor
from forecasting.train import (
    TrackArrays,
    TrainConfig,
    build_windows,
    evaluate_nll,
    lr_schedule,
    remeasured,
    require_windows,
    split_clips,
    train,
    view_change,
    view_map,
)
from forecasting.windows import Standardizer, WindowConfig, cut_windows, fill_unseen
from pipelines.tracks import load_tracks
from tests.realworld import clip_piece


def test_split_clips_is_deterministic_and_disjoint() -> None:
    names = [f"c{i}" for i in range(11)]
    a = split_clips(names, 0.2, 0)
    assert a == split_clips(names, 0.2, 0)
    assert len(a[1]) == 2 and not (a[0] & a[1]) and (a[0] | a[1]) == set(names)


@pytest.mark.slow
def test_training_on_a_small_real_subset_lowers_validation_nll(aihub2: Path) -> None:
    tracks = [t for t in load_tracks(aihub2, "train") if len(t.frames) > 3000]
    wcfg = WindowConfig(t_obs=8, horizon=6)
    tr = build_windows(tracks[:2], wcfg, stride=4, normal_only=True)
    va = build_windows(tracks[2:3], wcfg, stride=4, normal_only=True)
    assert len(tr) > 500 and len(va) > 100
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=64, flow_layers=4, flow_hidden=64, embed_dim=32)
    std = Standardizer.fit(tr)
    torch.manual_seed(0)
    untrained = GRUNF(mcfg, std)
    Pv, Mv = to_tensor(fill_unseen(va.poses, std.pose_mean)), to_tensor(va.mask)
    before = evaluate_nll(untrained, Pv, Mv)
    tcfg = TrainConfig(epochs=3, batch_size=128, seed=0, patience=3)
    res = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    after = res.history[-1]["val_nll"]
    assert after < before - 0.3, (before, after)
    assert res.history[-1]["train_nll"] < res.history[0]["train_nll"]
    # Deterministic on CPU for a seed.
    res2 = train(tr, va, mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    assert res2.history[-1]["val_nll"] == pytest.approx(after, abs=1e-6)


@pytest.mark.slow
def test_ensemble_members_are_seeded_trainings_and_sample_as_a_mixture(
    aihub2: Path, tmp_path: Path
) -> None:
    tracks = [t for t in load_tracks(aihub2, "train") if len(t.frames) > 3000]
    wcfg = WindowConfig(t_obs=8, horizon=6)
    tr = build_windows(tracks[:1], wcfg, stride=6, normal_only=True)
    va = build_windows(tracks[2:3], wcfg, stride=6, normal_only=True)
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=32, flow_layers=2, flow_hidden=32, embed_dim=16)
    tcfg = TrainConfig(epochs=2, batch_size=128, seed=1, members=3)
    res = train(tr, va, mcfg, tcfg, progress=False)
    assert isinstance(res.model, Ensemble)
    # Seeds seed * members + r, each trained exactly as a single training with that seed.
    assert [r["seed"] for r in res.members] == [3, 4, 5]
    single = train(tr, va, mcfg, replace(tcfg, seed=4, members=1), progress=False)
    assert single.best_val_nll == pytest.approx(res.members[1]["val_nll"], abs=1e-6)
    assert {h["member"] for h in res.history} == {0, 1, 2}
    # The mixture's density: per window between its best member's and that minus log(3).
    std = res.model.standardizer()
    Pv, Mv = to_tensor(fill_unseen(va.poses, std.pose_mean)), to_tensor(va.mask)
    with torch.no_grad():
        mix = res.model.log_prob(Pv, Mv)
        best = torch.stack([m.log_prob(Pv, Mv) for m in res.model.member_list()]).amax(0)
    assert bool((mix <= best + 1e-4).all()) and bool((mix >= best - math.log(3) - 1e-4).all())
    assert evaluate_nll(res.model, Pv, Mv) == pytest.approx(res.best_val_nll, abs=1e-6)
    # K futures split across the members: 7 + 7 + 6, the first 7 from member 0's draw.
    past, pm = Pv[:5, :9], Mv[:5, :9]
    out = res.model.sample(past, pm, None, 20, generator_seed=0)
    assert out.poses.shape == (5, 20, 6, 17, 2)
    first = res.model.member_list()[0].sample(past, pm, None, 7, generator_seed=0)
    assert torch.allclose(out.poses[:, :7], first.poses)
    # The ensemble round-trips through a checkpoint.
    path = save_checkpoint(tmp_path / "ens.pt", res.model, wcfg, tcfg, res.history)
    ck = load_checkpoint(path)
    assert isinstance(ck.model, Ensemble) and len(ck.model.member_list()) == 3
    assert torch.equal(ck.model.error_scale, res.model.error_scale)
    assert ck.sampler == CHECKPOINT_SAMPLER  # `--sampler default`: GRU-SNF at temperature 0.8
    assert (ck.sampler.name, ck.sampler.temperature) == ("gru-snf-t0.8", 0.8)
    assert ck.sampler == SNF_DEFAULT.with_(name="gru-snf-t0.8", temperature=0.8)
    assert evaluate_nll(ck.model, Pv, Mv) == pytest.approx(res.best_val_nll, abs=1e-6)
    with pytest.raises(ValueError, match="members"):
        train(tr, va, mcfg, TrainConfig(members=0), progress=False)


# -- issue 19 item 2: any number of windows and epochs >= 1 trains ------------------------------


def _lrs(total: int, lr: float = 2e-3) -> list[float]:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([w], lr=lr)
    sched = lr_schedule(opt, lr, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_the_lr_schedule_is_defined_for_every_step_count() -> None:
    for total in range(1, 41):
        lrs = _lrs(total)
        assert len(lrs) == total and all(math.isfinite(v) and v > 0 for v in lrs)
        if total <= 10:  # no warm-up: from lr down half a cosine
            expect = [2e-3 * 0.5 * (1 + math.cos(math.pi * k / total)) for k in range(total)]
            assert lrs == pytest.approx(expect)
        else:  # exactly OneCycleLR, as before (trained checkpoints stay reproducible)
            w = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([w], lr=2e-3)
            ref = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=2e-3, total_steps=total, pct_start=0.1
            )
            seq = []
            for _ in range(total):
                seq.append(opt.param_groups[0]["lr"])
                opt.step()
                ref.step()
            assert lrs == seq
    assert _lrs(10)[0] == 2e-3 and _lrs(10)[-1] == pytest.approx(2e-3 * 0.0245, rel=1e-2)
    with pytest.raises(ValueError, match="at least one optimiser step, got 0"):
        _lrs(0)


@pytest.mark.parametrize("epochs", [1, 2])
def test_a_few_dozen_windows_train_for_one_or_two_epochs(aihub2: Path, epochs: int) -> None:
    _, tracks, _ = clip_piece(aihub2, "train", 0, 0, 120)
    wcfg = WindowConfig(t_obs=8, horizon=6)
    arrays = [TrackArrays("c", t.keypoints, t.frames) for t in tracks.values()]
    tr = build_windows(arrays, wcfg, stride=2, normal_only=False)
    assert 40 <= len(tr) <= 60
    # flip-augmented 2 x len(tr) windows in batches of 20: 5 steps an epoch, 10 in 2 epochs
    # (OneCycleLR's zero-length warm-up)
    tcfg = TrainConfig(epochs=epochs, batch_size=math.ceil(2 * len(tr) / 5), seed=0)
    mcfg = ModelConfig(t_obs=8, horizon=6, hidden=16, flow_layers=2, flow_hidden=16, embed_dim=8)
    torch.set_num_threads(1)
    res = train(tr, tr.select(np.arange(0)), mcfg, tcfg, flip_index=FLIP_INDEX, progress=False)
    assert [h["epoch"] for h in res.history] == list(range(1, epochs + 1))
    assert all(math.isfinite(h["train_nll"]) and math.isfinite(h["loss"]) for h in res.history)
    with pytest.raises(ValueError, match="epochs and batch_size must be at least 1, got 0 and"):
        train(tr, tr, mcfg, replace(tcfg, epochs=0), progress=False)


def test_view_change_rolls_rigidly_and_squashes_each_axis_within_its_range() -> None:
    """Roll keeps every distance (a rigid turn about the torso centre) and turns a window by
    at most ``roll``, both ways; yaw scales only x, pitch only y, each by cos of at most
    its angle and by 1 at least; one draw per window (every frame and joint alike)."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(4000, 5, 17, 2)), dtype=torch.float32)
    torch.manual_seed(0)
    r = view_change(x, 15.0, 0.0, 0.0)
    assert torch.allclose(r.norm(dim=-1), x.norm(dim=-1), atol=1e-4)
    turn = torch.atan2(r[..., 1], r[..., 0]) - torch.atan2(x[..., 1], x[..., 0])
    deg = torch.rad2deg(torch.remainder(turn + math.pi, 2 * math.pi) - math.pi)
    per_window = deg[:, 0, 0]
    assert torch.allclose(deg, per_window[:, None, None].expand_as(deg), atol=1e-2)
    assert (
        per_window.abs().max() <= 15.0 + 1e-3 and per_window.min() < -14 and per_window.max() > 14
    )
    for axis, (yaw, pitch) in ((0, (60.0, 0.0)), (1, (0.0, 45.0))):
        s = view_change(x, 0.0, yaw, pitch)
        assert torch.equal(s[..., 1 - axis], x[..., 1 - axis])
        every = s[..., axis] / x[..., axis]
        assert torch.allclose(every, every[:, :1, :1].expand_as(every), atol=1e-5)
        ratio = every[:, 0, 0]
        lo = math.cos(math.radians(max(yaw, pitch)))
        assert ratio.min() >= lo - 1e-5 and ratio.max() <= 1 + 1e-6
        assert ratio.min() < lo + 0.01 and ratio.max() > 0.999
    # all three: squash first, then turn (the draws in view_change's order: yaw, pitch, roll)
    torch.manual_seed(3)
    got = view_change(x, 30.0, 40.0, 20.0)
    torch.manual_seed(3)
    a, b, c = (torch.rand(len(x)) for _ in range(3))
    sx, sy = torch.cos(torch.deg2rad(40.0 * a)), torch.cos(torch.deg2rad(20.0 * b))
    t = torch.deg2rad(-30.0 + 60.0 * c)[:, None, None]
    u, v = x[..., 0] * sx[:, None, None], x[..., 1] * sy[:, None, None]
    want = torch.stack(
        [torch.cos(t) * u - torch.sin(t) * v, torch.sin(t) * u + torch.cos(t) * v], -1
    )
    assert torch.allclose(got, want, atol=1e-5)


def test_a_view_change_then_remeasured_equals_cutting_the_window_from_the_turned_pixels(
    aihub2: Path,
) -> None:
    """Training's view change on a normalised window (squash, turn, size measured again)
    gives the window ``cut_windows`` cuts from pixel keypoints squashed and turned about
    that window's torso centre: the augmented windows are ones the pipeline would make."""
    track = max(load_tracks(aihub2, "train")[:2], key=lambda t: len(t.frames))
    kp = track.keypoints[:400].astype(np.float32)
    wcfg = WindowConfig(t_obs=8, horizon=6)
    w = cut_windows(kp, wcfg, stride=37)
    assert len(w) >= 5
    mask = torch.as_tensor(w.mask)
    x = torch.as_tensor(np.nan_to_num(w.poses))
    deg, sx, sy = 20.0, 0.6, 0.8
    n = len(w)
    got = remeasured(
        view_map(x, torch.full((n,), deg), torch.full((n,), sx), torch.full((n,), sy)),
        mask,
        wcfg.t_obs,
    )
    c, s_ = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    sizes = []
    for i in range(n):
        cx, cy, _ = w.ref[i]
        start = int(w.start[i])
        px = kp.copy()
        u, v = (px[..., 0] - cx) * sx, (px[..., 1] - cy) * sy
        px[..., 0], px[..., 1] = cx + c * u - s_ * v, cy + s_ * u + c * v
        one = cut_windows(px, wcfg, starts=np.array([start]))
        assert len(one) == 1
        want = torch.as_tensor(np.nan_to_num(one.poses[0]))
        # the torso centre of a turned, squashed body is the turned, squashed centre: origin
        assert torch.allclose(got[i][mask[i]], want[mask[i]], atol=1e-4)
        sizes.append(float(one.ref[0, 2] / w.ref[i, 2]))
    # the size really changed (else the test would not see a missing re-measure)
    assert max(abs(r - 1) for r in sizes) > 0.05


# -- issue 19 item 7: no window -> the window length and the longest track ---------------------


def test_tracks_too_short_for_a_window_say_the_length_needed_and_the_longest() -> None:
    rng = np.random.default_rng(0)
    tracks = [
        TrackArrays(f"c{i}", rng.uniform(10, 90, (n, 17, 3)).astype(np.float32), np.arange(n))
        for i, n in enumerate((5, 20, 13))
    ]
    wcfg = WindowConfig()
    w = build_windows(tracks, wcfg, stride=1, normal_only=True)
    with pytest.raises(ValueError) as info:
        require_windows(w, tracks, wcfg, True, "training windows in data/pose/train")
    assert str(info.value) == (
        "no training windows in data/pose/train: a window needs 25 consecutive frames of one "
        "track (1 + t_obs 12 + horizon 12, frame step 1), and the longest of the 3 tracks has "
        "20 (clip 'c1'); use longer tracks or a shorter window (--t-obs, --horizon)"
    )
    cfg = WindowConfig(t_obs=8, horizon=9, frame_step=3)  # (1 + 8 + 9 - 1) * 3 + 1 frames
    with pytest.raises(ValueError, match=r"needs 52 consecutive frames .*frame step 3\), and"):
        require_windows(build_windows(tracks, cfg, 1, True), tracks, cfg, True, "x")
    labelled = [replace(t, labels=np.ones(40, np.uint8)) for t in tracks]
    longer = [
        replace(t, keypoints=np.tile(t.keypoints, (3, 1, 1)), frames=np.arange(3 * len(t.frames)))
        for t in labelled
    ]
    w = build_windows(longer, wcfg, stride=1, normal_only=True)
    with pytest.raises(
        ValueError,
        match=r"2 of 3 tracks are long enough for a window of 25 frames .* dropped for an anomalous frame \(labels\) or fewer than 80% of their keypoints seen",
    ):
        require_windows(w, longer, wcfg, True, "training windows")
