"""How the fused score standardises its motion part: today's mean / std of the held-out
normal windows' ``minhde`` against robust scales.

The fused score is ``z_m + z_p + e`` (:meth:`forecasting.posture.PostureModel.fuse`), ``z_m``
the motion score (``minhde``, the log of a best-of-K error) standardised by the mean and
standard deviation of the checkpoint's held-out normal windows. On those windows ``minhde``
has a long *lower* tail (near-still people forecast almost exactly; the CI-sized control:
1% quantile -0.71, median 0.49, 99% 1.03), which the standard deviation counts and the
upper tail, where anomalies lie, does not have; a forecaster trained another way (session
24's roll augmentation: ``motion_std`` 0.376 -> 0.438) then weighs its motion part less.
Compared, each fitted on the validation clips' normal windows only (no test label):

- ``std``: ``(m - mean) / std`` (the checkpoint's own statistics; the fused score today);
- ``iqr``: ``(m - median) / (IQR / 1.349)`` (the normal-equivalent spread of the middle half);
- ``log``: ``(log m - mean log m) / std log m`` with ``m`` floored at 1e-6 (written for a
  raw distance; ``minhde`` is already a log, negative for about 10% of normal windows, so
  this one mostly measures the floor: kept as a measured negative);
- ``iqr2``: ``iqr`` for the motion part and the posture part alike.

Injected kinds on the validation clips and the test split's normal windows (no labels), and
(report only) the AIHub2 test frame AUC of each, from one draw of futures.

Usage::

    .venv/bin/python bench/motion_scale.py --model runs/ci/ctrl-m3.pt --model runs/ci/roll-m3.pt

Prints a table, writes ``bench/results/motion_scale.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fusion_rules import injected_aucs, rule_bench_args, rule_test_auc, write_rule_table
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER
from forecasting.injection import injected
from forecasting.posture import PostureModel
from forecasting.scoring import posture_of, score_windows_many
from forecasting.stillness import past_log_speed
from forecasting.windows import fill_unseen
from pipelines.offline.evaluation import load_clips, normal_window_sets
from pipelines.serving import scorer_config

SCALES = ("std", "iqr", "log", "iqr2")
PARTS = ("minhde", "posture", "fused")
Parts = dict[str, np.ndarray]


def raw_parts(model: Any, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, cfg: Any) -> Parts:  # fmt: skip
    """Raw motion ``r`` (minhde), weighted posture ``p`` and stillness excess ``e`` ``(N,)``."""
    pm = posture_of(model)
    assert isinstance(pm, PostureModel)
    many = score_windows_many(model, poses, mask, visible, cfg, PARTS)
    r = many["minhde"].score.astype(np.float64)
    p = pm.cfg.weight * many["posture"].score.astype(np.float64)
    e = many["fused"].score - pm_motion_z(pm, r, poses, mask, visible, model) - p
    return {"r": r, "p": p, "e": e}


def pm_motion_z(pm: PostureModel, r: np.ndarray, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, model: Any) -> np.ndarray:  # fmt: skip
    """The checkpoint's own standardised motion part ``(N,)`` of windows with motion scores
    ``r`` (at their observed speed for a speed-conditioned model, as the fused score has it)."""
    filled = fill_unseen(poses, model.standardizer().pose_mean)  # as scoring has them
    speed = past_log_speed(
        torch.as_tensor(filled), torch.as_tensor(visible & mask), 1 + model.cfg.t_obs
    )
    return pm.motion_z(torch.as_tensor(r, dtype=torch.float32), speed).double().numpy()


def scalers(pm: PostureModel, normal_r: np.ndarray, normal_p: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:  # fmt: skip
    """Each scale's map of raw motion to ``z_m`` (``iqr2``: of the posture part to its
    robust ``z_p``), fitted on held-out normal windows' ``normal_r`` and ``normal_p``."""
    lg = np.log(np.maximum(normal_r, 1e-6))
    lm, ls = float(lg.mean()), float(lg.std())
    if pm.cfg.speed_conditioned:
        raise ValueError("a speed-conditioned checkpoint: this bench compares pooled scales")
    mean, std = float(pm.motion_mean), float(pm.motion_std)
    return {
        "std": lambda r: (r - mean) / std,
        "iqr": robust(normal_r),
        "log": lambda r: (np.log(np.maximum(r, 1e-6)) - lm) / ls,
        "iqr2": robust(normal_p),
    }


def robust(normal: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``(x - median) / (IQR / 1.349)`` of ``normal``."""
    med = float(np.median(normal))
    q1, q3 = np.quantile(normal, [0.25, 0.75])
    sigma = float(q3 - q1) / 1.349
    return lambda x: (x - med) / sigma


def fused(sc: dict[str, Callable[[np.ndarray], np.ndarray]], d: Parts) -> dict[str, np.ndarray]:
    """Raw motion ``m``, posture ``p`` and each scale's fused score ``(N,)``."""
    out = {"m": d["r"], "p": d["p"]}
    for k, f in sc.items():
        if k == "iqr2":
            out[k] = sc["iqr"](d["r"]) + f(d["p"]) + d["e"]
        else:
            out[k] = f(d["r"]) + d["p"] + d["e"]
    return out


def one_model(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    ck = load_checkpoint(path)
    pm = posture_of(ck.model)
    assert isinstance(pm, PostureModel)
    t_obs = ck.window_config.t_obs
    cfg = scorer_config(ck, "fused", DEFAULT_SAMPLER, args.samples)
    sets = normal_window_sets(
        args.data, ck.meta.get("validation_clips", []), ck.window_config, args.stride
    )
    normal = {n: raw_parts(ck.model, w.poses, w.mask, w.visible, cfg) for n, w in sets.items()}
    sc = scalers(pm, normal["validation"]["r"], normal["validation"]["p"])
    r = normal["validation"]["r"]
    res: dict[str, Any] = {
        "model": str(path),
        "motion_normal": {
            "mean": float(pm.motion_mean),
            "std": float(pm.motion_std),
            "median": float(np.median(r)),
            "iqr_sigma": float(np.subtract(*np.quantile(r, [0.75, 0.25])) / 1.349),
            "log_std": float(np.log(np.maximum(r, 1e-6)).std()),
            "windows": len(r),
        },
        "injected": injected_aucs(
            path.name,
            sets,
            {n: fused(sc, normal[n]) for n in sets},
            args.kinds,
            lambda w, kind: injected(w, kind, t_obs),
            lambda poses, w: fused(sc, raw_parts(ck.model, poses, w.mask, w.visible, cfg)),
        ),
    }
    if args.test_auc:
        res["test"] = test_auc(ck, load_clips(args.data, "test"), cfg, sc)
    return res


def test_auc(ck: Any, clips: Sequence[Any], cfg: Any, sc: Any) -> dict[str, tuple[float, float]]:
    """Frame AUC of each scale on AIHub2 test from one draw
    (:func:`bench.fusion_rules.rule_test_auc`)."""
    return rule_test_auc(ck, clips, cfg, lambda *a: fused(sc, raw_parts(*a)), list(SCALES))


def main() -> None:
    args = rule_bench_args(__doc__.splitlines()[0], "bench/results/motion_scale.json")
    t0 = time.perf_counter()
    rows = [one_model(p, args) for p in args.model]
    write_rule_table(
        args,
        rows,
        ("m", "p", *SCALES),
        8,
        lambda r: f"normal motion: {r['motion_normal']}",
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    main()
