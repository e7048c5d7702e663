"""Cold start on AIHub2: how good is the model a new camera learns from its first minutes?

For each N (minutes) and seed, the cold-start recipe (``SceneLearner`` with the settings of
a default configuration: ``cold_start`` and ``forecaster`` defaults, only the seed changed)
learns from the first N minutes of AIHub2 train's *normal* footage, played as one camera
at 30 fps: the train clips in name order, each run of normal frames (labels 0) one after
the other with a 3 s gap, every person's track id made unique per run (the anomalous
frames are cut out, so no track spans them). The learned model, with the threshold it
calibrated on its own held-out footage, is then evaluated on AIHub2 test exactly as
``posewatch evaluate`` does (frame AUC-ROC offline and causal, AP, event recall at 1 and 5
false alerts per camera-hour), and at its calibrated threshold the events it alerts and the
false episodes per hour.

Training is capped by wall time (``cold_start.max_train_minutes``, 10 min by default: the 3
scene-model members each stop after a third of it, the posture flows get what is left), as
in the service: run it on an otherwise idle machine, or the figures measure the load.
``--set FIELD=VALUE`` tries other cold-start settings; ``--also minhde posture`` adds the
AUCs of the fused score's parts to each seed row.

Prints a table, writes ``bench/results/cold_start_eval.json``.

Usage::

    .venv/bin/python bench/cold_start_eval.py [--minutes 0.75 3 10] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.datasets import load_split
from detector.pose import Person, PoseFrame, bbox_from_keypoints
from forecasting.calibration import Calibration
from pipelines.clip_scoring import score_split_many
from pipelines.config import PosewatchConfig
from pipelines.learning import LearnSettings, SceneLearner
from pipelines.offline.evaluation import load_clips, report
from pipelines.serving import scorer_config

FPS = 30.0
GAP_FRAMES = 90  # 3 s between runs of normal footage


def normal_stream(data: Path, minutes: float) -> list[PoseFrame]:
    """The first ``minutes`` of AIHub2 train's normal footage as one camera's pose frames
    (``(17, 3)`` keypoints in pixels, timestamps in seconds at 30 fps)."""
    out: list[PoseFrame] = []
    index, next_id, limit = 0, 0, minutes * 60 * FPS
    for clip in sorted(load_split(data, "train"), key=lambda c: c.name):
        labels = clip.frame_labels()
        rows: dict[int, list[tuple[int, Any]]] = {}
        for tid, tr in clip.tracks.items():
            for i, f in enumerate(tr.frames):
                if tr.present[i]:
                    rows.setdefault(int(f), []).append((tid, tr.keypoints[i]))
        run_start = -1
        ids: dict[int, int] = {}
        for f in range(clip.num_frames):
            if labels[f]:
                run_start = -1
                continue
            if run_start < 0:  # a new run of normal frames: new track ids, a gap
                run_start, ids, index = f, {}, index + GAP_FRAMES
            persons = []
            for tid, kp in rows.get(f, []):
                if tid not in ids:
                    ids[tid], next_id = next_id, next_id + 1
                persons.append(Person(ids[tid], bbox_from_keypoints(kp), 1.0, kp))
            out.append(PoseFrame("aihub2", index, index / FPS, (1920, 1080), persons))
            index += 1
            if len(out) >= limit:
                return out
    if len(out) < limit:
        logging.warning("only %.2f min of normal footage in train", len(out) / FPS / 60)
    return out


def learn(frames: list[PoseFrame], settings: LearnSettings) -> Any:
    """Run the cold-start learner on ``frames`` as the service does; the learned model."""
    learner = SceneLearner("aihub2", settings)
    for pf in frames:
        learner.add(pf, FPS)
    learner.input_ended()
    learner.wait()
    if learner.error:
        raise RuntimeError(learner.error)
    model = learner.poll()
    assert model is not None
    return model


def overrides(base: LearnSettings, pairs: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as typed :class:`LearnSettings` fields (the type of ``base``'s
    value).

    Raises:
        SystemExit: a pair without ``=`` or a field LearnSettings does not have.

    Example:
        >>> overrides(LearnSettings(), ["posture_flows=8", "max_train_minutes=7.5"])
        {'posture_flows': 8, 'max_train_minutes': 7.5}
    """
    out: dict[str, Any] = {}
    known = {f.name for f in fields(LearnSettings)} - {"save_dir", "store", "seed", "seconds"}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE, FIELD one of {sorted(known)}")
        try:
            out[key] = type(getattr(base, key))(value)
        except ValueError as exc:
            raise SystemExit(f"--set {pair!r}: {exc}") from None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--minutes", type=float, nargs="+", default=[0.75, 3.0, 10.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sigma", type=float, default=9.5, help="offline smoothing (evaluate's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cold_start_eval.json"))
    ap.add_argument(
        "--also",
        nargs="*",
        default=[],
        help="other scorers of the same model and draw (e.g. minhde posture): their AUCs "
        "are added to each seed row as auc_offline_<name> / auc_causal_<name>",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="cold-start settings other than the default configuration's (LearnSettings "
        "fields, e.g. posture_flows=8); recorded in the JSON's settings",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        help="no run: the seed rows of these earlier outputs (same settings) summarised "
        "together into --out",
    )
    args = ap.parse_args()
    if args.merge:
        runs = [json.loads(p.read_text()) for p in args.merge]
        if any(r["settings"] != runs[0]["settings"] for r in runs):
            raise SystemExit(f"--merge: {args.merge} were run with different settings")
        rows = [row for r in runs for row in r["seed_rows"]]
        write(args.out, runs[0]["settings"], rows, list(dict.fromkeys(r["minutes"] for r in rows)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    default = PosewatchConfig.model_validate({"cameras": {"aihub2": {"source": "x.mp4"}}})
    # no alert store (operators' verdicts would move the threshold), nothing saved
    base = replace(LearnSettings.from_config(default), store=None, save_dir=None)
    base = replace(base, **overrides(base, args.set))
    clips = load_clips(args.data, "test")
    rows = []
    for minutes in args.minutes:
        frames = normal_stream(args.data, minutes)
        for seed in args.seeds:
            t0 = time.perf_counter()
            # The stream ends at N minutes of footage; the learner trains when it ends (its
            # own trigger counts the 3 s gaps between runs as footage).
            settings = replace(base, seconds=math.inf, seed=seed)
            m = learn(frames, settings)
            learn_s = time.perf_counter() - t0
            ck = m.checkpoint
            cfg = scorer_config(ck, settings.scorer, settings.sampler, settings.samples)
            names = (cfg.name, *[a for a in args.also if a != cfg.name])
            many, secs, nw = score_split_many(ck, clips, cfg, names, 1, progress=False)
            cal = Calibration.from_record(ck.calibration)
            assert cal is not None  # the learner always calibrates
            # as `posewatch evaluate` does; at the threshold, alerts as the service raises
            # them (the calibration's minimum duration)
            reports = {
                n: report(
                    n,
                    cfg.sampler.name,
                    many[n],
                    args.sigma,
                    settings.sigma,
                    FPS,
                    secs,
                    nw,
                    cal,
                    cal.min_duration,
                )
                for n in names
            }
            r = reports[cfg.name]
            d = asdict(r)
            for other in names[1:]:
                o = reports[other]
                d[f"auc_offline_{other}"], d[f"auc_causal_{other}"] = o.auc_offline, o.auc_causal
            d.update(
                minutes=minutes,
                seed=seed,
                learn_seconds=learn_s,
                threshold=m.threshold,
                **m.info,
            )
            rows.append(d)
            print(
                f"N={minutes:g} min seed {seed}: AUC off {100 * r.auc_offline:.1f} causal "
                f"{100 * r.auc_causal:.1f} (learned in {learn_s:.0f} s, threshold "
                f"{m.threshold:.3f})",
                *[f"{n} {100 * d[f'auc_offline_{n}']:.1f}" for n in names[1:]],
                *[f"{k} {v:.4g}" for k, v in m.info.items()],
                flush=True,
            )
    write(args.out, asdict(base), rows, args.minutes)


def summarise(rows: list[dict[str, Any]], minutes: list[float]) -> list[dict[str, Any]]:
    """Mean (and sample std) over seeds of each N's seed rows, printed as a table; the AUCs
    of ``--also`` scorers as ``auc_offline_<name>_mean`` where every row has them."""
    summary = []
    head = f"{'minutes':>8}{'AUC off':>14}{'AUC causal':>14}{'AP off':>14}{'R@1/h':>8}{'R@5/h':>8}{'R@thr':>7}{'FA/h':>7}{'learn s':>9}"
    print(head)
    print("-" * len(head))
    for n in minutes:
        sel = [r for r in rows if r["minutes"] == n]

        def ms(f: str, sel: list[dict[str, Any]] = sel) -> tuple[float, float]:
            v = [100 * r[f] for r in sel]
            return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)

        parts = [k for k in sel[0] if k.startswith("auc_offline_") and all(k in r for r in sel)]
        d = {
            "minutes": n,
            "seeds": len(sel),
            **{
                f"{f}_{s}": v
                for f in ("auc_offline", "auc_causal", "ap_offline", *parts)
                for s, v in zip(("mean", "std"), ms(f), strict=True)
            },
            "recall_1h": statistics.mean(100 * r["recall"][0]["event_recall"] for r in sel),
            "recall_5h": statistics.mean(100 * r["recall"][1]["event_recall"] for r in sel),
            "recall_at_threshold": statistics.mean(
                100 * r["calibrated"]["test_event_recall"] for r in sel
            ),
            "false_per_hour_at_threshold": statistics.mean(
                r["calibrated"]["test_false_per_hour"] for r in sel
            ),
            "learn_seconds": statistics.mean(r["learn_seconds"] for r in sel),
        }
        summary.append(d)
        print(
            f"{n:>8g}{d['auc_offline_mean']:>8.1f} ±{d['auc_offline_std']:>4.1f}"
            f"{d['auc_causal_mean']:>8.1f} ±{d['auc_causal_std']:>4.1f}"
            f"{d['ap_offline_mean']:>8.1f} ±{d['ap_offline_std']:>4.1f}"
            f"{d['recall_1h']:>8.0f}{d['recall_5h']:>8.0f}{d['recall_at_threshold']:>7.0f}"
            f"{d['false_per_hour_at_threshold']:>7.1f}{d['learn_seconds']:>9.0f}"
        )
    return summary


def write(
    out: Path, settings: dict[str, Any], rows: list[dict[str, Any]], minutes: list[float]
) -> None:
    """Summarise ``rows`` and write them with the settings to ``out``."""
    summary = summarise(rows, minutes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"settings": settings, "rows": summary, "seed_rows": rows}, indent=2, default=str
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
