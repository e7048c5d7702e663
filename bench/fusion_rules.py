"""How the fused score combines motion, posture and stillness: rules compared on injected
anomalies (validation clips and the test split's normal windows) and on AIHub2 test.

The fused score adds the standardised motion score ``z_m`` (minhde), the posture score
``z_p`` and the stillness excess ``e`` (:meth:`forecasting.posture.PostureModel.fuse`). A
sum lets a part that sees nothing cancel a part that sees the anomaly: a person running
three times too fast has a typical (or more typical) posture, and a low ``z_p`` pulls the
sum down. Rules compared, from one draw of futures per window:

- ``sum``: ``z_m + z_p + e`` (the fused score as it is);
- ``fisher``: ``-log sf(z_m) - log sf(z_p) + e`` (Fisher's combination of the parts' upper
  tail p-values, Gaussian tails): a part below its normal median adds about 0 instead of
  subtracting, and one part far in its tail is not diluted by the other;
- ``max``: ``max(z_m, z_p) + e``;
- ``softplus``: ``softplus(z_m) + softplus(z_p) + e``.

The injected kinds need no test labels; the AIHub2 test AUC (``--test-auc``) shows what a
rule costs or gains on real anomalies. Session 13 kept the sum although the injected kinds
favour the others, because of that test AUC (``docs/DECISIONS.md``).

Usage::

    .venv/bin/python bench/fusion_rules.py --model runs/anomaly_eval/seed0-m7.pt [--test-auc]

Prints a table, writes ``bench/results/fusion_rules.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipelines.clip_scoring as clip_scoring
from forecasting.checkpoint import load_checkpoint
from forecasting.defaults import DEFAULT_SAMPLER, DEFAULT_SAMPLES
from forecasting.detection_metrics import roc_auc
from forecasting.injection import KINDS, injected
from forecasting.posture import PostureModel
from forecasting.scoring import WindowScores, posture_of, score_windows_many
from forecasting.stillness import past_log_speed
from forecasting.windows import Windows, fill_unseen
from pipelines.offline.evaluation import load_clips, normal_window_sets, report
from pipelines.serving import scorer_config

Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

RULES: dict[str, Rule] = {
    "sum": lambda m, p, e: m + p + e,
    "fisher": lambda m, p, e: -norm.logsf(m) - norm.logsf(p) + e,
    "max": lambda m, p, e: np.maximum(m, p) + e,
    "softplus": lambda m, p, e: np.logaddexp(0, m) + np.logaddexp(0, p) + e,
}
PARTS = ("minhde", "posture", "fused")


def parts(model: Any, poses: np.ndarray, mask: np.ndarray, visible: np.ndarray, cfg: Any) -> dict[str, np.ndarray]:  # fmt: skip
    """Standardised motion ``m``, posture ``p`` and stillness excess ``e`` ``(N,)`` of
    windows (one draw of futures), and each rule's score."""
    pm = posture_of(model)
    assert isinstance(pm, PostureModel)
    many = score_windows_many(model, poses, mask, visible, cfg, PARTS)
    filled = fill_unseen(poses, model.standardizer().pose_mean)  # as scoring has them
    speed = past_log_speed(
        torch.as_tensor(filled), torch.as_tensor(visible & mask), 1 + model.cfg.t_obs
    )
    m = pm.motion_z(torch.as_tensor(many["minhde"].score), speed).numpy()
    p = pm.cfg.weight * many["posture"].score
    e = many["fused"].score - m - p
    out = {"m": m, "p": p, "e": e}
    out.update({k: rule(m, p, e) for k, rule in RULES.items()})
    return out


def main() -> None:
    args = rule_bench_args(
        "Fusion rules of the fused score on injected anomalies and AIHub2 test",
        "bench/results/fusion_rules.json",
        many=False,
    )
    ck = load_checkpoint(args.model)
    t_obs = ck.window_config.t_obs
    cfg = scorer_config(ck, "fused", DEFAULT_SAMPLER, args.samples)
    sets = normal_window_sets(
        args.data, ck.meta.get("validation_clips", []), ck.window_config, args.stride
    )
    t0 = time.perf_counter()
    sets = {k: sets[k] for k in ("validation", "test")}
    base = {n: parts(ck.model, w.poses, w.mask, w.visible, cfg) for n, w in sets.items()}
    result: dict[str, Any] = {"model": str(args.model), "rules": list(RULES)}
    result["injected"] = injected_aucs(
        args.model.name,
        sets,
        base,
        args.kinds,
        lambda w, kind: injected(w, kind, t_obs),
        lambda poses, w: parts(ck.model, poses, w.mask, w.visible, cfg),
    )
    result["seconds_injected"] = time.perf_counter() - t0
    if args.test_auc:
        result["test"] = test_auc(ck, load_clips(args.data, "test"), cfg)
    print(f"{'set.kind':<22}" + "".join(f"{k:>10}" for k in ("m", "p", *RULES)))
    for key, row in result["injected"].items():
        print(f"{key:<22}" + "".join(f"{row[k]:>10.3f}" for k in ("m", "p", *RULES)))
    for k, (off, cau) in result.get("test", {}).items():
        print(f"AIHub2 test {k:<10} AUC offline {100 * off:.2f} causal {100 * cau:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


def rule_bench_args(description: str, out: str, many: bool = True) -> argparse.Namespace:
    """The rule benches' command line (this one's, ``bench/haste.py``, ``motion_scale.py``,
    ``speed_conditioned.py``): ``--model`` (repeatable when ``many``, else one path),
    ``--data``, ``--kinds``, ``--samples``, ``--stride``, ``--threads``, ``--test-auc``,
    ``--out`` (default ``out``); sets torch's threads."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", type=Path, action="append" if many else "store", required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    ap.add_argument("--stride", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--test-auc", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(out))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def injected_aucs(
    label: str,
    sets: dict[str, Windows],
    base: dict[str, dict[str, np.ndarray]],
    kinds: Sequence[str],
    pick: Callable[[Windows, str], tuple[np.ndarray, Windows, np.ndarray]],
    scores: Callable[[np.ndarray, Windows], dict[str, np.ndarray]],
) -> dict[str, dict[str, float]]:
    """AUC-ROC of every score of ``base[set]`` (``{score name: (N,)}`` on the set's untouched
    windows) against the same score of each kind's anomalous copies: ``pick(windows, kind)
    -> (keep (N,) bool, kept windows, their anomalous poses)``, ``scores(poses, windows) ->
    {score name: (n,)}``. Keys ``"{set}.{kind}"``, each row with ``windows``; a kind with
    fewer than 10 windows to inject into is left out. Prints a line per row, led by
    ``label``."""
    out: dict[str, dict[str, float]] = {}
    for name, w0 in sets.items():
        for kind in kinds:
            keep, w, poses = pick(w0, kind)
            if keep.sum() < 10:
                print(f"{label} {name} {kind}: only {keep.sum()} windows move; skipped")
                continue
            bad = scores(poses, w)
            y = np.r_[np.zeros(len(w)), np.ones(len(w))]
            row = {k: roc_auc(y, np.r_[v[keep], bad[k]]) for k, v in base[name].items()}
            row["windows"] = len(w)
            out[f"{name}.{kind}"] = row
            print(f"{label} {name:>10} {kind:<11}" + "".join(f"{k}={v:.3f} " for k, v in row.items() if k != "windows"), flush=True)  # fmt: skip
    return out


def write_rule_table(args: argparse.Namespace, rows: list[dict[str, Any]], cols: Sequence[str], width: int, note: Callable[[dict[str, Any]], str], seconds: float) -> None:  # fmt: skip
    """Print the rule benches' table (per model: every injected set.kind by ``cols``, the
    AIHub2 test AUCs, then ``note(row)``) and write ``{"rows", "seconds"}`` to ``args.out``."""
    print(f"\n{'model':<14}{'set.kind':<24}" + "".join(f"{k:>{width}}" for k in cols))
    for r in rows:
        name = Path(r["model"]).stem
        for key, row in r["injected"].items():
            print(f"{name:<14}{key:<24}" + "".join(f"{row[k]:>{width}.3f}" for k in cols))
        for k, (off, cau) in r.get("test", {}).items():
            print(f"{name:<14}AIHub2 test {k:<12} AUC offline {100 * off:.2f} causal {100 * cau:.2f}")  # fmt: skip
        print(f"{name:<14}{note(r)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "seconds": seconds}, indent=2, default=float))
    print(f"wrote {args.out}")


def rule_test_auc(ck: Any, clips: Sequence[Any], cfg: Any, scores: Callable[..., dict[str, np.ndarray]], names: Sequence[str]) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Frame AUC (offline, causal; as ``bench/anomaly_eval.py``) on AIHub2 test of each of
    ``names``, window scores ``scores(model, poses, mask, visible, cfg) -> {name: (N,)}``,
    all from one draw: the clip scorer's window scoring is wrapped to return them."""
    original = clip_scoring.score_windows_many  # type: ignore[attr-defined]

    def wrapped(model: Any, poses: Any, mask: Any, visible: Any, c: Any, asked: Sequence[str]) -> dict[str, WindowScores]:  # fmt: skip
        d = scores(model, poses, mask, visible, c)
        nan = np.full((len(poses), 17), np.nan, np.float32)
        return {k: WindowScores(d[k].astype(np.float32), nan) for k in asked}

    clip_scoring.score_windows_many = wrapped  # type: ignore[attr-defined,assignment]
    try:
        many, secs, nw = clip_scoring.score_split_many(ck, clips, cfg, list(names), 1, False)
    finally:
        clip_scoring.score_windows_many = original  # type: ignore[attr-defined]
    out = {}
    for k in names:
        r = report(k, cfg.sampler.name, many[k], 9.5, 6.0, 30.0, secs, nw)
        out[k] = (r.auc_offline, r.auc_causal)
    return out


def test_auc(ck: Any, clips: Sequence[Any], cfg: Any) -> dict[str, tuple[float, float]]:
    """:func:`rule_test_auc` of every rule."""
    return rule_test_auc(ck, clips, cfg, parts, list(RULES))


if __name__ == "__main__":
    main()
