"""The checkpoint format: save, load and update a trained forecaster (atomic writes).

Serving code reads checkpoints through this module without importing the trainer
(:mod:`forecasting.train`).

A checkpoint is a ``torch.save`` dict: ``format``, ``format_version``, ``code_version``,
``model_config``, ``window_config``, ``standardizer``, ``members`` (1, or the size of an
:class:`~forecasting.torch_model.Ensemble`), ``state_dict``, ``train_config``, ``history``,
``sampler`` (the checkpoint's default sampler, the GRU-SNF default unless given;
``--sampler default``), ``calibration`` (alert threshold and the serving configuration it
was fitted for) and, with posture flows, ``posture``.

Every write goes to a temporary file in the same folder, is flushed to disk and then renamed
over the target, so a crash mid-write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from forecasting.posture import PostureConfig, PostureModel
from forecasting.snf import SNF_DEFAULT, SamplerConfig
from forecasting.torch_model import GRUNF, Ensemble, Forecaster, ModelConfig
from forecasting.windows import Standardizer, WindowConfig

CHECKPOINT_FORMAT = "posewatch-grunf"
CHECKPOINT_VERSION = 1


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        version = metadata.version("posewatch")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+g{sha}" if sha else version


@dataclass(slots=True)
class Checkpoint:
    """A loaded model with everything needed to use it."""

    model: Forecaster
    window_config: WindowConfig
    sampler: SamplerConfig
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def calibration(self) -> dict[str, Any]:
        cal: dict[str, Any] = self.meta.setdefault("calibration", {})
        return cal

    def model_id(self, posture: bool = False) -> str:
        """Short hash of the weights that a threshold depends on (12 hex digits): the
        forecaster's, plus the posture flows' with ``posture`` (the ``posture`` and
        ``fused`` scorers). Retraining changes it; adding posture flows changes only the
        posture scorers' id. Calibrations store it and the service compares it."""
        key = f"_model_id_{int(posture)}"
        fp = self.meta.get(key)
        if fp is None:
            fp = self.meta[key] = model_fingerprint(self.model, posture)
        return str(fp)


def model_fingerprint(model: torch.nn.Module, posture: bool = True) -> str:
    """SHA-256 (first 12 hex digits) over the names, shapes and bytes of every tensor of
    ``model``'s state dict, in name order; without ``posture``, tensors of the posture flows
    (``posture.*``) are left out."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not posture and name.startswith("posture."):
            continue
        a = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(a.shape)}:{a.dtype}".encode())
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()[:12]


def _atomic_save(blob: dict[str, Any], path: Path) -> None:
    """``torch.save`` to ``path`` through a flushed temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(blob, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | Path,
    model: Forecaster,
    wcfg: WindowConfig,
    tcfg: Any = None,
    history: list[dict[str, float]] | None = None,
    sampler: SamplerConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint (see the module docstring for its content)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "code_version": code_version(),
        "model_config": model.cfg.to_dict(),
        "window_config": wcfg.to_dict(),
        "standardizer": model.standardizer().to_dict(),
        "members": len(model.member_list()) if isinstance(model, Ensemble) else 1,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": tcfg.to_dict() if tcfg is not None else None,
        "history": history or [],
        "sampler": (sampler or SNF_DEFAULT).to_dict(),
        "calibration": {},
    }
    posture = getattr(model, "posture", None)
    if isinstance(posture, PostureModel):
        blob["posture"] = posture.cfg.to_dict()
    if extra:
        blob.update(extra)
    _atomic_save(blob, path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: not a posewatch checkpoint, or from an incompatible format version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint (train one with `posewatch train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a posewatch GRU-NF checkpoint")
    if blob.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format {blob.get('format_version')} is not {CHECKPOINT_VERSION}; retrain"
        )
    mcfg = ModelConfig(**blob["model_config"])
    std = Standardizer.from_dict(blob["standardizer"])
    members = int(blob.get("members", 1))
    model: Forecaster = (
        Ensemble([GRUNF(mcfg, std) for _ in range(members)]) if members > 1 else GRUNF(mcfg, std)
    )
    if blob.get("posture"):
        joints = model.error_scale.shape[0]
        model.posture = PostureModel(PostureConfig.from_dict(blob["posture"]), joints)
    state = dict(blob["state_dict"])
    # Checkpoints written before the per-joint error scale existed score unscaled.
    state.setdefault("error_scale", torch.ones(model.error_scale.shape))
    model.load_state_dict(state)
    model.to(device).eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return Checkpoint(
        model=model,
        window_config=WindowConfig(**blob["window_config"]),
        sampler=SamplerConfig.from_dict(blob["sampler"]),
        meta=meta,
        path=path,
    )


def update_checkpoint(path: str | Path, **fields: Any) -> None:
    """Set top-level fields of a saved checkpoint (e.g. ``calibration``, ``sampler``)."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    blob.update(fields)
    _atomic_save(blob, path)


def attach_posture(path: str | Path, posture: PostureModel) -> None:
    """Add (or replace) the posture flows of a saved checkpoint
    (:mod:`forecasting.posture`); the rest of the checkpoint is kept as it is."""
    path = Path(path)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = {k: v for k, v in blob["state_dict"].items() if not k.startswith("posture.")}
    state.update({f"posture.{k}": v.detach().cpu() for k, v in posture.state_dict().items()})
    blob["state_dict"] = state
    blob["posture"] = posture.cfg.to_dict()
    _atomic_save(blob, path)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "attach_posture",
    "code_version",
    "load_checkpoint",
    "model_fingerprint",
    "save_checkpoint",
    "update_checkpoint",
]
