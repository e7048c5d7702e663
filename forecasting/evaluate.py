"""Forecast evaluation: one row of metrics per sampler configuration.

Example (with a trained model)::

    rows = evaluate_forecasts(model, windows, [GRU_NF, default_snf()], num_samples=20)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from forecasting import metrics
from forecasting.snf import SamplerConfig
from forecasting.torch_model import D, Forecaster, to_tensor
from forecasting.windows import Windows, fill_unseen


@dataclass(slots=True)
class ForecastRow:
    """Metrics of one sampler over a window set (distances in normalised units)."""

    sampler: str
    windows: int
    K: int
    min_ade: float
    min_fde: float
    ade_mean: float
    apd: float
    energy: float
    energy_weighted: float
    nll: float
    acceptance: float
    ess: float
    seconds: float
    outside: float = math.nan
    middle_half: float = math.nan
    middle_half_calibrated: float = math.nan
    rank_histogram: list[int] = field(default_factory=list)


def _nll_per_dim(model: Forecaster, poses: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean NLL of the windows' true futures, nats per coordinate (batches of 1,024)."""
    with torch.inference_mode():
        nll_sum = sum(
            float(model.log_prob(poses[i : i + 1024], mask[i : i + 1024]).sum())
            for i in range(0, len(poses), 1024)
        )
    return -nll_sum / max(len(poses) * model.cfg.horizon * D, 1)


def _window_metrics(
    smp: torch.Tensor, log_weights: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-window ``(B,)`` minADE, minFDE, ADE of the mean, APD, energy score (plain and
    with the importance weights) and ESS of futures ``smp (B, K, H, 17, 2)``."""
    w = metrics.normalized_weights(log_weights)
    return {
        "ade": metrics.min_ade(smp, truth, mask),
        "fde": metrics.min_fde(smp, truth, mask),
        "mean": metrics.ade_of_mean(smp, truth, mask),
        "apd": metrics.apd(smp),
        "es": metrics.energy_score(smp, truth, mask),
        "esw": metrics.energy_score(smp, truth, mask, w),
        "ess": metrics.effective_sample_size(log_weights),
    }


def evaluate_forecasts(
    model: Forecaster,
    windows: Windows,
    samplers: Sequence[SamplerConfig],
    num_samples: int = 20,
    batch: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> list[ForecastRow]:
    """Sample K futures for every window with every sampler and compute the metrics.

    Arguments:
        model: trained GRU-NF.
        windows: windows of length ``1 + t_obs + horizon``.
        samplers: sampler configurations (one row each).
        num_samples: K.
        batch: windows per sampling call.
        seed: torch seed before each sampler (same base noise for every sampler).
        progress: progress bar.
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    std = model.standardizer()
    poses = to_tensor(fill_unseen(windows.poses, std.pose_mean), device)
    mask = to_tensor(windows.mask, device)
    n_obs = 1 + cfg.t_obs
    truth = poses[:, n_obs:]
    tmask = mask[:, n_obs:] & to_tensor(windows.visible[:, n_obs:], device)
    nll = _nll_per_dim(model, poses, mask)
    rows = []
    for s in samplers:
        torch.manual_seed(seed)
        acc: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("ade", "fde", "mean", "apd", "es", "esw", "ess")
        }
        accepted = proposed = 0.0
        hist = torch.zeros(num_samples + 1, dtype=torch.long)
        t0 = time.perf_counter()
        it = range(0, len(windows), batch)
        for i in tqdm(it, disable=not progress, desc=s.name, unit="batch"):
            sl = slice(i, i + batch)
            out = model.sample(poses[sl, :n_obs], mask[sl, :n_obs], cfg.horizon, num_samples, s)
            smp, tr, m = out.poses.cpu(), truth[sl].cpu(), tmask[sl].cpu()
            for k, v in _window_metrics(smp, out.log_weights.cpu(), tr, m).items():
                acc[k].append(v)
            hist += metrics.rank_histogram(smp, tr, m)
            accepted += float(out.stats.accepted.sum())
            proposed += float(out.stats.proposed.sum())
        secs = time.perf_counter() - t0

        def mean(k: str, acc: dict[str, list[torch.Tensor]] = acc) -> float:
            return float(torch.cat(acc[k]).mean()) if acc[k] else math.nan

        outside, middle, middle_cal = metrics.rank_shares(hist)
        rows.append(
            ForecastRow(
                sampler=s.name,
                windows=len(windows),
                K=num_samples,
                min_ade=mean("ade"),
                min_fde=mean("fde"),
                ade_mean=mean("mean"),
                apd=mean("apd"),
                energy=mean("es"),
                energy_weighted=mean("esw"),
                nll=nll,
                acceptance=accepted / proposed if proposed else math.nan,
                ess=mean("ess"),
                seconds=secs,
                outside=outside,
                middle_half=middle,
                middle_half_calibrated=middle_cal,
                rank_histogram=hist.tolist(),
            )
        )
    return rows


def format_table(rows: Sequence[ForecastRow]) -> str:
    """A plain-text table of forecast rows. ``out%``: truths outside the samples' range
    (calibrated ``200 / (K + 1)``); ``mid%``: in the middle half of the rank histogram
    (calibrated: ``middle_half_calibrated``, ~50)."""
    head = f"{'sampler':<24}{'minADE':>9}{'minFDE':>9}{'ADEmean':>9}{'APD':>8}{'ES':>8}{'ES(w)':>8}{'NLL':>8}{'acc':>6}{'ESS':>6}{'out%':>6}{'mid%':>6}{'s':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = "-" if math.isnan(r.acceptance) else f"{r.acceptance:.2f}"
        lines.append(
            f"{r.sampler:<24}{r.min_ade:>9.4f}{r.min_fde:>9.4f}{r.ade_mean:>9.4f}{r.apd:>8.4f}"
            f"{r.energy:>8.4f}{r.energy_weighted:>8.4f}{r.nll:>8.3f}{acc:>6}{r.ess:>6.1f}"
            f"{100 * r.outside:>6.1f}{100 * r.middle_half:>6.1f}{r.seconds:>7.1f}"
        )
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[ForecastRow]) -> list[dict[str, object]]:
    return [asdict(r) for r in rows]
