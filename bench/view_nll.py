"""Does the forecaster model normal motion, or this camera's picture of it? NLL under a view change.

For each checkpoint, the normal windows of its validation clips (AIHub2 train, held out)
and of the AIHub2 test split (windows whose frames are all labelled normal; no anomaly is
scored) are turned as another camera would see them, and the forecaster's teacher-forced
NLL of their futures is measured (nats per future coordinate, mean over windows; per
ensemble member and of the members' mixture). A forecaster that has learned how people
move keeps its NLL when the view changes; one that has learned where this camera's people
go does not. No anomaly label is used, so the figure can choose settings.

Views, applied to the normalised windows (origin at the person's torso centre, units of
the person's size; so a roll or squash about the person, which for a person small in the
frame is what the camera change does to them), each window then divided by the person's
size measured again, as the pipeline measures it on what a camera shows (a squash then
shows its change of shape, not of size):

- ``mirror``: horizontal flip, left and right keypoints swapped;
- ``rot+15`` / ``rot-15``: camera roll by 15 degrees (image axes, y down);
- ``squash-x0.7``: horizontal coordinates x 0.7 (a camera turned about 45 degrees about the
  vertical axis, flat approximation); ``squash-y0.7`` the same vertically (a camera looking
  down more steeply).

Usage::

    .venv/bin/python bench/view_nll.py --model runs/anomaly_eval/seed0-m7.pt [--model ...]
        [--stride 4] [--threads 2] [--out bench/results/view_nll.json]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.skeleton import FLIP_INDEX
from forecasting.checkpoint import load_checkpoint
from forecasting.torch_model import to_tensor
from forecasting.train import evaluate_nll, remeasured, view_map
from forecasting.windows import fill_unseen
from pipelines.offline.evaluation import normal_window_sets

#: name -> (roll degrees, x scale, y scale, mirrored)
VIEWS: dict[str, tuple[float, float, float, bool]] = {
    "none": (0.0, 1.0, 1.0, False),
    "mirror": (0.0, 1.0, 1.0, True),
    "rot+15": (15.0, 1.0, 1.0, False),
    "rot-15": (-15.0, 1.0, 1.0, False),
    "squash-x0.7": (0.0, 0.7, 1.0, False),
    "squash-y0.7": (0.0, 1.0, 0.7, False),
}


def viewed(
    poses: torch.Tensor, mask: torch.Tensor, view: str, t_obs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``(N, L, 17, 2)`` and their mask ``(N, L, 17)`` as seen in ``view``, the
    person's size measured again (:func:`forecasting.train.remeasured`), as the pipeline does."""
    deg, sx, sy, mirrored = VIEWS[view]
    x = poses.clone()
    if mirrored:
        x, mask = x[:, :, list(FLIP_INDEX)], mask[:, :, list(FLIP_INDEX)]
        x[..., 0] = -x[..., 0]
    n = x.shape[0]
    x = view_map(x, torch.full((n,), deg), torch.full((n,), sx), torch.full((n,), sy))
    return remeasured(x, mask, t_obs), mask


def measure(path: Path, data: Path, stride: int) -> list[dict[str, Any]]:
    ck = load_checkpoint(path)
    model = ck.model
    std = model.standardizer()
    sets = normal_window_sets(data, ck.meta["validation_clips"], ck.window_config, stride)
    members = model.member_list() if hasattr(model, "member_list") else [model]
    rows = []
    for split, w in sets.items():
        poses, mask = to_tensor(fill_unseen(w.poses, std.pose_mean)), to_tensor(w.mask)
        for view in VIEWS:
            x, m = viewed(poses, mask, view, ck.window_config.t_obs)
            per = [evaluate_nll(member, x, m) for member in members]
            rows.append(
                {
                    "model": str(path),
                    "set": split,
                    "view": view,
                    "windows": len(w),
                    "nll_members": per,
                    "nll_members_mean": sum(per) / len(per),
                    "nll_mixture": evaluate_nll(model, x, m),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/aihub2"))
    ap.add_argument("--stride", type=int, default=4, help="window starts this many frames apart")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/view_nll.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = [r for p in args.model for r in measure(p, args.data, args.stride)]
    print(f"{'model':<34}{'set':<12}{'view':<13}{'windows':>8}{'members':>9}{'mixture':>9}")
    for r in rows:
        print(
            f"{Path(r['model']).name:<34}{r['set']:<12}{r['view']:<13}{r['windows']:>8,}"
            f"{r['nll_members_mean']:>9.3f}{r['nll_mixture']:>9.3f}"
        )
    cmd = "bench/view_nll.py " + " ".join(sys.argv[1:])
    out = {"command": cmd, "seconds": time.perf_counter() - t0, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
