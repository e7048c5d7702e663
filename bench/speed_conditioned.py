"""The fused score's motion part measured against people who moved alike: standardised
conditionally on the person's observed speed.

On held-out normal windows the standardised motion score ``z_m`` (``minhde``) is largely a
measure of speed: its correlation with the log of the observed past's motion per frame is
0.78 on the validation clips (0.64 on the test split; the CI-sized model): a standing
person's futures are forecast almost exactly (``z_m`` about -2), a walker's less so (about
+0.3). Pooled over people who stand and people who walk, a standing person's anomaly (a
3x speed-up of their future) scores below a normal walker: injected run3x on the test
split, where most people stand, gives ``fused`` 0.907 pooled but 0.935-0.962 within every
speed band. Compared, fitted on the validation clips' normal windows only (no test label):

- ``fused``: today's ``z_m + z_p + e`` (:meth:`forecasting.posture.PostureModel.fuse`);
- ``cond``: ``z_m`` replaced by the residual of a least-squares line of ``minhde`` in
  ``log(v_past + eps)`` over its residual spread (``v_past``: the observed frames' mean
  keypoint displacement per frame, :func:`forecasting.stillness.motion_per_frame`; only
  the past, so a live scorer has it and an injected future does not change it);
- ``cond+speed``: ``cond`` plus the one-sided excess of the standardised ``log v_past``
  above its 99th percentile (the stillness term's recipe): the conditioning would hide a
  person who moves too fast all along (runs through the scene), this term sees them;
- ``sustained run3x`` (an extra injected kind here): the whole window, past included, a
  person moving 3x as fast (displacements from the first frame scaled by 3), the anomaly
  the conditioning alone would miss.

Injected kinds on the validation clips and the test split's normal windows (no labels), and
(report only) the AIHub2 test frame AUC, from one draw of futures.

The product's version (:meth:`forecasting.posture.PostureModel.motion_z`, session 25: the
default) differs in two details measured after this bench: the log speed is clamped to the
normal windows' 1st..99th percentile (no extrapolation), and a window of unknown speed is
measured at the mean speed; ``bench/injected_anomalies.py`` on a refitted checkpoint
measures it.

Usage::

    .venv/bin/python bench/speed_conditioned.py --model runs/ci/seed0-m3.pt [--test-auc]

Prints a table, writes ``bench/results/speed_conditioned.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fusion_rules import injected_aucs, rule_bench_args, rule_test_auc, write_rule_table
from bench.motion_scale import raw_parts
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER
from forecasting.injection import injected, moving_mask
from forecasting.posture import PostureModel
from forecasting.scoring import posture_of
from forecasting.stillness import EPS, HINGE_QUANTILE, motion_per_frame
from forecasting.torch_model import to_tensor
from forecasting.windows import Windows, fill_unseen
from pipelines.offline.evaluation import load_clips, normal_window_sets
from pipelines.serving import scorer_config

RULES = ("fused", "cond", "cond+speed")
Parts = dict[str, np.ndarray]
Fit = Callable[[Parts], dict[str, np.ndarray]]


def log_speed(poses: np.ndarray, seen: np.ndarray, n_obs: int, pose_mean: np.ndarray) -> np.ndarray:  # fmt: skip
    """``(N,)`` log of the observed frames' mean keypoint displacement per frame + EPS
    (poses filled as scoring fills them; the first run of this bench did not, and windows
    with a missing keypoint came out motionless: see docs/DECISIONS.md, session 25)."""
    filled = fill_unseen(poses, pose_mean)
    v = motion_per_frame(to_tensor(filled), to_tensor(seen), 0, n_obs).numpy()
    return np.log(np.nan_to_num(v, nan=0.0) + EPS).astype(np.float64)


def parts(model: Any, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, cfg: Any) -> Parts:  # fmt: skip
    """:func:`bench.motion_scale.raw_parts` and the windows' observed ``log_v``."""
    d = raw_parts(model, poses, mask, visible, cfg)
    d["log_v"] = log_speed(
        poses, visible & mask, 1 + model.cfg.t_obs, model.standardizer().pose_mean
    )
    return d


def fit_rules(pm: PostureModel, normal: Parts) -> Fit:
    """Each rule's score of windows' parts, fitted on held-out normal windows' ``normal``."""
    if pm.cfg.speed_conditioned:
        raise ValueError("a speed-conditioned checkpoint: this bench starts from pooled ones")
    b, a = np.polyfit(normal["log_v"], normal["r"], 1)
    res_sd = float((normal["r"] - (a + b * normal["log_v"])).std())
    vm, vs = float(normal["log_v"].mean()), float(normal["log_v"].std())
    hinge = float(np.quantile((normal["log_v"] - vm) / vs, HINGE_QUANTILE))
    mean, std = float(pm.motion_mean), float(pm.motion_std)

    def rules(d: Parts) -> dict[str, np.ndarray]:
        rest = d["p"] + d["e"]
        cond = (d["r"] - (a + b * d["log_v"])) / res_sd + rest
        fast = np.maximum((d["log_v"] - vm) / vs - hinge, 0.0)
        return {
            "fused": (d["r"] - mean) / std + rest,
            "cond": cond,
            "cond+speed": cond + fast,
            "m": d["r"],
            "p": d["p"],
        }

    rules.fitted = {"slope": float(b), "intercept": float(a), "residual_sd": res_sd, "speed_hinge": hinge}  # type: ignore[attr-defined]  # fmt: skip
    return rules


def sustained(w: Any, factor: float = 3.0) -> np.ndarray:
    """The whole window of a person moving ``factor`` times as fast: every frame's offset
    from the first frame scaled (the body's shape kept: the window's centre path scaled)."""
    p = w.poses.copy()
    centre = np.nanmean(p, axis=2, keepdims=True)  # (N, T, 1, 2)
    path = centre - centre[:, :1]
    return p + (factor - 1.0) * path


def one_model(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    ck = load_checkpoint(path)
    pm = posture_of(ck.model)
    assert isinstance(pm, PostureModel)
    t_obs = ck.window_config.t_obs
    cfg = scorer_config(ck, "fused", DEFAULT_SAMPLER, args.samples)
    sets = normal_window_sets(
        args.data, ck.meta.get("validation_clips", []), ck.window_config, args.stride
    )
    normal = {n: parts(ck.model, w.poses, w.mask, w.visible, cfg) for n, w in sets.items()}
    rules = fit_rules(pm, normal["validation"])
    res: dict[str, Any] = {"model": str(path), "fitted": rules.fitted}  # type: ignore[attr-defined]

    def pick(w0: Windows, kind: str) -> tuple[np.ndarray, Windows, np.ndarray]:
        if kind != "sustained3x":
            return injected(w0, kind, t_obs)
        keep = moving_mask(w0, t_obs)
        w = w0.select(keep)
        return keep, w, sustained(w)

    res["injected"] = injected_aucs(
        path.name,
        sets,
        {n: rules(normal[n]) for n in sets},
        [*args.kinds, "sustained3x"],
        pick,
        lambda poses, w: rules(parts(ck.model, poses, w.mask, w.visible, cfg)),
    )
    if args.test_auc:
        res["test"] = test_auc(ck, load_clips(args.data, "test"), cfg, rules)
    return res


def test_auc(ck: Any, clips: Sequence[Any], cfg: Any, rules: Fit) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Frame AUC of each rule on AIHub2 test from one draw
    (:func:`bench.fusion_rules.rule_test_auc`)."""
    return rule_test_auc(ck, clips, cfg, lambda *a: rules(parts(*a)), list(RULES))


def main() -> None:
    args = rule_bench_args(__doc__.splitlines()[0], "bench/results/speed_conditioned.json")
    t0 = time.perf_counter()
    rows = [one_model(p, args) for p in args.model]
    write_rule_table(
        args,
        rows,
        ("m", "p", *RULES),
        11,
        lambda r: f"fitted: {r['fitted']}",
        time.perf_counter() - t0,
    )


if __name__ == "__main__":
    main()
