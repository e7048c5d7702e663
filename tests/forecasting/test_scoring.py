"""The default scorer separates injected anomalies from untouched held-out real windows."""

from pathlib import Path

import numpy as np
import pytest
import torch

from forecasting.checkpoint import load_checkpoint
from forecasting.detection_metrics import roc_auc
from forecasting.injection import MOTION_KINDS, inject, moving
from forecasting.scoring import SCORERS, ScorerConfig, kde_nll, resolve_scorer, score_windows
from forecasting.train import build_windows
from pipelines.tracks import load_tracks


def test_kde_nll_is_lower_near_the_samples_and_masked() -> None:
    torch.manual_seed(0)
    samples = torch.randn(1, 50, 2, 17, 2) * 0.05
    near = torch.zeros(1, 2, 17, 2)
    far = near + 0.5
    mask = torch.ones(1, 2, 17, dtype=torch.bool)
    assert (kde_nll(samples, near, mask) < kde_nll(samples, far, mask)).all()
    mask[0, :, 3] = False
    assert (kde_nll(samples, far, mask)[0, :, 3] == 0).all()
    # Weights concentrate the density on the weighted sample.
    w = torch.zeros(1, 50)
    w[0, 7] = 1.0
    at7 = samples[:, 7]
    assert kde_nll(samples, at7, mask, w).mean() < kde_nll(samples, at7, mask).mean()


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first case trains 3 default members (~15 min on 2 idle cores)
@pytest.mark.parametrize("kind", ["fall", "jump", "run3x", "freeze"])
def test_default_scorer_separates_injected_anomalies(
    aihub2: Path, default_checkpoint: Path, kind: str
) -> None:
    """On the default model's first three members (see ``default_checkpoint``), K = 42.
    Measured with minhde: fall 1.0, jump 0.989, run3x 1.0, freeze 0.912; the full 7-member
    default (benchmark seed 0): 1.0 / 0.991 / 1.0 / 0.915 (single models of seeds 0, 1, 2 at
    K = 20: freeze 0.934 / 0.908 / 0.905; the small CI model of the other tests reaches only
    0.865 on freeze, kde 0.82)."""
    ck = load_checkpoint(default_checkpoint)
    val = set(ck.meta["validation_clips"])
    tracks = [t for t in load_tracks(aihub2, "train") if t.clip in val]
    w = build_windows(tracks, ck.window_config, stride=9, normal_only=True)
    assert len(w) > 150
    if kind in MOTION_KINDS:
        w = moving(w, ck.window_config.t_obs)
    rng = np.random.default_rng(0)
    bad = inject(w, kind, ck.window_config.t_obs, rng)
    cfg = ScorerConfig(name=resolve_scorer("auto", ck.model))  # the service's default
    normal = score_windows(ck.model, w.poses, w.mask, w.visible, cfg).score
    anomal = score_windows(ck.model, bad, w.mask, w.visible, cfg).score
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomal))]
    auc = roc_auc(labels, np.r_[normal, anomal])
    print(f"{kind}: AUC {auc:.3f} over {len(normal)} windows")
    assert auc > 0.9, f"{kind}: AUC {auc:.3f}"


@pytest.mark.slow
def test_every_scorer_returns_per_joint_contributions(
    aihub2: Path, trained_checkpoint: Path
) -> None:
    ck = load_checkpoint(trained_checkpoint)
    tracks = [t for t in load_tracks(aihub2, "test") if len(t.frames) > 3000][:1]
    w = build_windows(tracks, ck.window_config, stride=200, normal_only=False)
    bad = inject(w, "jump", ck.window_config.t_obs, np.random.default_rng(0))
    for name in SCORERS:
        s = score_windows(ck.model, bad, w.mask, w.visible, ScorerConfig(name=name))  # type: ignore[arg-type]
        assert s.score.shape == (len(w),) and s.joints.shape == (len(w), 17)
        assert np.isfinite(s.score).all()
        # A vertical jump of the whole body moves every joint; legs and head alike contribute.
        assert (np.nanmean(s.joints, 0) != 0).all()
