"""A one-sided term for motion *faster* than expected, beside the fused score's stillness term.

The fused score (``z_m + z_p + e``, :meth:`forecasting.posture.PostureModel.fuse`) sees a
body that stops dead through its stillness excess ``e`` (:mod:`forecasting.stillness`: the
part of the standardised ``log(past motion) - log(future motion)`` above the 99th percentile
of held-out normal windows), because the best-of-K motion part barely sees it. Its mirror,
a body that suddenly moves much faster, is left to ``z_m`` alone, and the posture part's
spread dilutes it in the sum (injected run3x on the test split: ``minhde`` 0.953, ``fused``
0.907). Compared, each term's excess fitted as the stillness term's (standardised on the
validation clips' normal windows, counted above their 99th percentile; no test label):

- ``haste``: the stillness statistic's other side, ``log(future motion) - log(past motion)``
  (model-free: the person's own past is the reference);
- ``fast``: ``log(future motion) - median_k log(motion of forecast k)`` over the K futures
  the motion part draws anyway (the forecaster's expectation is the reference: a standing
  person whose futures include walking off is not flagged for walking off).

Each is added to today's fused score. Injected kinds on the validation clips and the test
split's normal windows (no labels), and (report only) the AIHub2 test frame AUC, from one
draw of futures.

Usage::

    .venv/bin/python bench/haste.py --model runs/ci/seed0-m3.pt [--test-auc]

Prints a table, writes ``bench/results/haste.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import forecasting.scoring as scoring
from bench.fusion_rules import injected_aucs, rule_bench_args, rule_test_auc, write_rule_table
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER
from forecasting.injection import injected
from forecasting.posture import PostureModel
from forecasting.scoring import posture_of
from forecasting.stillness import EPS, HINGE_QUANTILE, motion_per_frame, stillness
from forecasting.torch_model import to_tensor
from pipelines.offline.evaluation import load_clips, normal_window_sets
from pipelines.serving import scorer_config

TERMS = ("haste", "fast")
RULES = ("fused", "fused+haste", "fused+fast")
Parts = dict[str, np.ndarray]


def sample_motion(p_obs: torch.Tensor, smp: torch.Tensor) -> torch.Tensor:
    """``(B,)`` median over the K futures ``smp (B, K, H, 17, 2)`` of the log mean keypoint
    displacement per frame from the last observed frame ``p_obs[:, -1]`` on."""
    last = p_obs[:, -1][:, None, None].expand(-1, smp.shape[1], 1, -1, -1)
    x = torch.cat([last.to(smp.dtype), smp], 2)
    d = torch.linalg.vector_norm(x[:, :, 1:] - x[:, :, :-1], dim=-1).mean((2, 3))  # (B, K)
    return torch.log(d + EPS).median(1).values


def raw_parts(model: Any, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, cfg: Any) -> Parts:  # fmt: skip
    """Fused score ``f`` and the raw statistics ``haste``, ``fast`` ``(N,)`` of windows."""
    drawn: list[torch.Tensor] = []
    original = scoring._draw

    def recording(*a: Any, **k: Any) -> tuple[torch.Tensor, torch.Tensor]:
        smp, lw = original(*a, **k)
        drawn.append(sample_motion(a[2], smp).cpu())
        return smp, lw

    scoring._draw = recording  # type: ignore[assignment]
    try:
        many = scoring.score_windows_many(model, poses, mask, visible, cfg, ["fused"])
    finally:
        scoring._draw = original  # type: ignore[assignment]
    n_obs = 1 + model.cfg.t_obs
    p = to_tensor(poses)
    seen = to_tensor(visible & mask)
    fut = motion_per_frame(p, seen, n_obs - 1, p.shape[1])
    fast = torch.log(fut + EPS) - torch.cat(drawn)
    return {
        "f": many["fused"].score.astype(np.float64),
        "haste": (-stillness(p, seen, n_obs)).numpy().astype(np.float64),
        "fast": torch.nan_to_num(fast, nan=0.0).numpy().astype(np.float64),
    }


def excess(normal: np.ndarray) -> Any:
    """The stillness term's recipe: standardise on ``normal``, keep what is above its
    :data:`HINGE_QUANTILE`."""
    mean, std = float(normal.mean()), float(normal.std())
    hinge = float(np.quantile((normal - mean) / std, HINGE_QUANTILE))
    return lambda x: np.maximum((x - mean) / std - hinge, 0.0)


def rules(ex: dict[str, Any], d: Parts) -> dict[str, np.ndarray]:
    out = {"fused": d["f"]}
    for t in TERMS:
        out[f"fused+{t}"] = d["f"] + ex[t](d[t])
        out[t] = d[t]
    return out


def one_model(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    ck = load_checkpoint(path)
    assert isinstance(posture_of(ck.model), PostureModel)
    t_obs = ck.window_config.t_obs
    cfg = scorer_config(ck, "fused", DEFAULT_SAMPLER, args.samples)
    sets = normal_window_sets(
        args.data, ck.meta.get("validation_clips", []), ck.window_config, args.stride
    )
    normal = {n: raw_parts(ck.model, w.poses, w.mask, w.visible, cfg) for n, w in sets.items()}
    ex = {t: excess(normal["validation"][t]) for t in TERMS}
    res: dict[str, Any] = {
        "model": str(path),
        "normal_above_hinge": {
            f"{n}.{t}": float((ex[t](normal[n][t]) > 0).mean()) for n in normal for t in TERMS
        },
        "injected": injected_aucs(
            path.name,
            sets,
            {n: rules(ex, normal[n]) for n in sets},
            args.kinds,
            lambda w, kind: injected(w, kind, t_obs),
            lambda poses, w: rules(ex, raw_parts(ck.model, poses, w.mask, w.visible, cfg)),
        ),
    }
    if args.test_auc:
        res["test"] = test_auc(ck, load_clips(args.data, "test"), cfg, ex)
    return res


def test_auc(ck: Any, clips: Sequence[Any], cfg: Any, ex: dict[str, Any]) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Frame AUC of each rule on AIHub2 test from one draw
    (:func:`bench.fusion_rules.rule_test_auc`)."""
    return rule_test_auc(ck, clips, cfg, lambda *a: rules(ex, raw_parts(*a)), list(RULES))


def main() -> None:
    args = rule_bench_args(__doc__.splitlines()[0], "bench/results/haste.json")
    t0 = time.perf_counter()
    rows = [one_model(p, args) for p in args.model]
    write_rule_table(
        args,
        rows,
        (*TERMS, *RULES),
        13,
        lambda r: f"normal windows above the hinge: {r['normal_above_hinge']}",
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    main()
