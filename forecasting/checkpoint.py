"""The checkpoint format: save, load and update a trained forecaster (atomic writes).

Serving code reads checkpoints through this module without importing the trainer
(:mod:`forecasting.train`).

A checkpoint is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: the model's
tensors (the state dict, bit for bit) plus one metadata entry, ``posewatch``, a JSON object:
``format`` (``posewatch-grunf``), ``format_version`` (:data:`CHECKPOINT_VERSION`),
``code_version``, ``model_config``, ``window_config``, ``standardizer``, ``members`` (1, or
the size of an :class:`~forecasting.torch_model.Ensemble`), ``train_config``, ``history``,
``sampler`` (the checkpoint's default sampler, :data:`forecasting.snf.CHECKPOINT_SAMPLER` unless given;
``--sampler default``), ``calibration`` (alert threshold and the serving configuration it
was fitted for) and, with posture flows, ``posture``. Loading one parses a JSON header and
copies tensor bytes: it never runs code, whoever wrote the file.

Checkpoints of format 1 (posewatch before 2026-11-30) were Python pickles
(``torch.save``), which can run arbitrary code when loaded; they are refused with a message
naming :func:`migrate_checkpoint` (``posewatch model migrate OLD NEW``), which converts one
once, for files the user trusts.

Every write goes to a temporary file in the same folder, is flushed to disk and then renamed
over the target, so a crash mid-write never leaves a half-written checkpoint.

Example:
    >>> import tempfile
    >>> from forecasting.torch_model import GRUNF, ModelConfig
    >>> from forecasting.windows import Standardizer
    >>> std = Standardizer(*(np.zeros(17 * 2, np.float32) + v for v in (0, 1, 0, 1)))
    >>> model = GRUNF(ModelConfig(hidden=8, flow_layers=1, flow_hidden=8, embed_dim=4), std)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ck = load_checkpoint(save_checkpoint(Path(d) / "m.pt", model, WindowConfig()))
    ...     same = model_fingerprint(ck.model) == model_fingerprint(model)
    >>> same, ck.meta["format_version"], ck.meta["members"]
    (True, 2, 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from forecasting.defaults import MODEL_FPS
from forecasting.posture import PostureConfig, PostureModel
from forecasting.snf import CHECKPOINT_SAMPLER, SamplerConfig
from forecasting.torch_model import GRUNF, Ensemble, Forecaster, ModelConfig
from forecasting.windows import Standardizer, WindowConfig

CHECKPOINT_FORMAT = "posewatch-grunf"
#: 2: safetensors + a JSON header (loading runs no code); 1: a ``torch.save`` pickle.
CHECKPOINT_VERSION = 2
#: The safetensors metadata key that holds the JSON header.
HEADER_KEY = "posewatch"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since torch 1.6 (a zip holding a pickle)
_PICKLE_MAGIC = b"\x80"  # a bare pickle (protocol 2+), e.g. torch.save's legacy format


class CheckpointError(ValueError):
    """A file that is not a loadable posewatch checkpoint; the message names the file and
    what to do (retrain, migrate, upgrade)."""


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
    """A loaded model with everything needed to use it.

    Attributes:
        model: the forecaster (eval mode, on the device asked for).
        window_config: how its windows are cut.
        sampler: its default sampler.
        meta: the JSON header (configurations, ``calibration``, ``history``, ...).
        path: the file it came from.
    """

    model: Forecaster
    window_config: WindowConfig
    sampler: SamplerConfig
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def calibration(self) -> dict[str, Any]:
        cal: dict[str, Any] = self.meta.setdefault("calibration", {})
        return cal

    @property
    def fps(self) -> float:
        """Frame rate of the model's training footage, frames/s (the header's ``fps``;
        :data:`~forecasting.defaults.MODEL_FPS` for a checkpoint without one): its windows
        are frames at this rate (:func:`~forecasting.windows.model_frames`)."""
        return float(self.meta.get("fps") or MODEL_FPS)

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


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-able data: numpy scalars and arrays become numbers and lists,
    tuples lists, paths strings.

    Raises:
        CheckpointError: a value JSON cannot hold (named by its key path ``where``).
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"checkpoint metadata {where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(
        f"checkpoint metadata {where}: a {type(value).__name__} cannot be stored (only "
        "numbers, strings, lists and mappings; tensors go in the state dict)"
    )


def encode_checkpoint(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """The bytes of a checkpoint file: ``tensors`` (CPU copies, bit for bit) and ``meta``
    as the JSON header (``format`` and ``format_version`` are set here).

    Raises:
        CheckpointError: ``meta`` holds something JSON cannot (named by its key path).
    """
    header = _plain(
        {**meta, "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION}, "meta"
    )
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    text = json.dumps(header, sort_keys=True, allow_nan=True)
    return bytes(safetensors.torch.save(state, metadata={HEADER_KEY: text}))


def _is_pickle(data: bytes) -> bool:
    """``data`` starts like a ``torch.save`` file: a zip, or a bare pickle (protocol 2-5)."""
    return data.startswith(_ZIP_MAGIC) or (
        data[:1] == _PICKLE_MAGIC and len(data) > 1 and 2 <= data[1] <= 5
    )


def _old_format(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: a checkpoint in the format of earlier posewatch versions (a Python pickle, "
        "which can run code when loaded); posewatch no longer loads those. If you trust where "
        f"this file came from, convert it once: posewatch model migrate {path} NEW.pt (or "
        "retrain)"
    )


def read_checkpoint_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON header and the tensors of a checkpoint file, without running any code.

    Returns:
        ``(meta, tensors)``: the header (``format``, ``format_version``, configurations,
        calibration, ...) and the state dict (CPU tensors).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a posewatch checkpoint (damaged, foreign, an old pickled one
            -- the message names ``posewatch model migrate`` --, or of a newer format).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint (train one with `posewatch train`)")
    if path.is_dir():
        raise CheckpointError(f"{path}: a folder, not a checkpoint file; give the .pt file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc.strerror})") from None
    try:
        tensors = safetensors.torch.load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    except (safetensors.SafetensorError, ValueError, AttributeError) as exc:
        if _is_pickle(data):
            raise _old_format(path) from None
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a safetensors file: {exc}); "
            "give a checkpoint written by `posewatch train`"
        ) from None
    try:
        meta = json.loads(header[HEADER_KEY])
    except (KeyError, TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a posewatch GRU-NF checkpoint (a safetensors file without posewatch's "
            "header); give a checkpoint written by `posewatch train`"
        )
    version = meta.get("format_version")
    if version != CHECKPOINT_VERSION:
        newer = isinstance(version, int) and version > CHECKPOINT_VERSION
        raise CheckpointError(
            f"{path}: checkpoint format {version} is not {CHECKPOINT_VERSION}; "
            + ("upgrade posewatch" if newer else "retrain")
        )
    return meta, tensors


def _atomic_write(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
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


def write_checkpoint_file(
    path: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Write a checkpoint file atomically (see :func:`encode_checkpoint`); returns the path.

    Raises:
        CheckpointError: ``meta`` holds something JSON cannot.
        OSError: the file cannot be written.
    """
    path = Path(path)
    data = encode_checkpoint(meta, tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(data, path)
    return path


def save_checkpoint(
    path: str | Path,
    model: Forecaster,
    wcfg: WindowConfig,
    tcfg: Any = None,
    history: list[dict[str, float]] | None = None,
    sampler: SamplerConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint (see the module docstring for its content); returns the path.

    Arguments:
        path: file to write (``.pt`` by convention; the content is safetensors).
        model: the forecaster (a :class:`GRUNF` or an :class:`Ensemble`).
        wcfg: how its windows are cut.
        tcfg: the training configuration (anything with ``to_dict()``), or None.
        history: per-epoch training records.
        sampler: the checkpoint's default sampler (when None,
            :data:`forecasting.snf.CHECKPOINT_SAMPLER`: GRU-SNF at temperature 0.8).
        extra: more header fields (JSON-able: numbers, strings, lists, mappings).

    Raises:
        CheckpointError: ``extra`` holds something JSON cannot (named by its key).
        OSError: the file cannot be written.
    """
    meta: dict[str, Any] = {
        "code_version": code_version(),
        "model_config": model.cfg.to_dict(),
        "window_config": wcfg.to_dict(),
        "standardizer": model.standardizer().to_dict(),
        "members": len(model.member_list()) if isinstance(model, Ensemble) else 1,
        "train_config": tcfg.to_dict() if tcfg is not None else None,
        "history": history or [],
        "sampler": (sampler or CHECKPOINT_SAMPLER).to_dict(),
        "calibration": {},
    }
    posture = getattr(model, "posture", None)
    if isinstance(posture, PostureModel):
        meta["posture"] = posture.cfg.to_dict()
    if extra:
        meta.update(extra)
    return write_checkpoint_file(path, meta, dict(model.state_dict()))


#: Largest integer a model configuration may hold (a width, a layer count): the model is
#: built from the header before its tensors are loaded, so the header is bounded first.
MAX_MODEL_SIZE = 8192


def _check_sizes(path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """Refuse a header that would build a model other than the one whose tensors the file
    holds (a crafted ``members`` or width would exhaust memory before the mismatch shows)."""
    in_file = {k.split(".")[1] for k in state if k.startswith("members.")}
    members = int(meta.get("members", 1))
    if members != max(1, len(in_file)):
        raise CheckpointError(
            f"{path}: the header says {members} ensemble members, the tensors hold "
            f"{max(1, len(in_file))}; a damaged or foreign file"
        )
    for name, value in (meta.get("model_config") or {}).items():
        _check_int(path, f"model_config.{name}", value, 0, MAX_MODEL_SIZE)
    window = meta.get("window_config") or {}
    for name, (lo, hi) in _WINDOW_BOUNDS.items():
        if name in window:
            _check_int(path, f"window_config.{name}", window[name], lo, hi)
    posture = meta.get("posture")
    if isinstance(posture, dict):
        for name, (lo, hi) in _POSTURE_BOUNDS.items():
            if name in posture:
                _check_int(path, f"posture.{name}", posture[name], lo, hi)
        nll = state.get("posture.nll_mean")
        held = None if nll is None or nll.dim() != 1 else int(nll.shape[0])
        if held != posture.get("flows"):
            raise CheckpointError(
                f"{path}: the header says {posture.get('flows')} posture flows, the tensors "
                f"hold {held}; a damaged or foreign file"
            )
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensors hold NaN or infinite values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): a damaged file or a training that diverged "
            "(every score would be NaN and nothing would alert); retrain"
        )


#: Bounds of a header's window and posture settings (frames, steps): a crafted value would
#: build a model that exhausts memory, or windows no track ever fills (nothing scored).
_WINDOW_BOUNDS = {
    "t_obs": (1, 1024),
    "horizon": (1, 1024),
    "frame_step": (1, 64),
    "max_gap": (0, 1024),
}
_POSTURE_BOUNDS = {"frames": (1, 2048), "flows": (0, 256), "steps": (1, 64), "max_hop": (1, 64)}


def _check_int(path: Path, name: str, value: Any, lo: int, hi: int) -> None:
    """Refuse an integer header setting outside ``lo..hi`` (other types are left to the
    configuration classes)."""
    if isinstance(value, int) and not isinstance(value, bool) and not (lo <= value <= hi):
        raise CheckpointError(
            f"{path}: {name} = {value} is outside {lo}..{hi}; a damaged or foreign file"
        )


def _check_fps(fps: Any) -> None:
    """``ValueError`` unless ``fps`` (a header's ``fps``) is absent or a frame rate."""
    if fps is None:
        return
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0.1 <= fps <= 1000:
        raise ValueError(f"fps {str(fps)[:40]} is not a frame rate in 0.1 .. 1000 (frames/s)")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (no code runs while reading).

    Arguments:
        path: the checkpoint file.
        device: where the model's tensors go.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) not a posewatch checkpoint, an old pickled one
            (the message says ``posewatch model migrate``), or an incompatible format version.
    """
    path = Path(path)
    meta, state = read_checkpoint_file(path)
    try:
        _check_sizes(path, meta, state)
        mcfg = ModelConfig(**meta["model_config"])
        std = Standardizer.from_dict(meta["standardizer"])
        members = int(meta.get("members", 1))
        model: Forecaster = (
            Ensemble([GRUNF(mcfg, std) for _ in range(members)])
            if members > 1
            else GRUNF(mcfg, std)
        )
        if meta.get("posture"):
            joints = model.error_scale.shape[0]
            model.posture = PostureModel(PostureConfig.from_dict(meta["posture"]), joints)
        # Checkpoints written before the per-joint error scale existed score unscaled.
        state.setdefault("error_scale", torch.ones(model.error_scale.shape))
        model.load_state_dict(state)
        window_config = WindowConfig(**meta["window_config"])
        sampler = SamplerConfig.from_dict(meta["sampler"])
        _check_fps(meta.get("fps"))
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{path}: a damaged posewatch checkpoint ({exc}); retrain") from None
    model.to(device).eval()
    return Checkpoint(
        model=model, window_config=window_config, sampler=sampler, meta=meta, path=path
    )


def update_checkpoint(path: str | Path, **fields: Any) -> None:
    """Set top-level header fields of a saved checkpoint (e.g. ``calibration``,
    ``sampler``); the tensors are kept bit for bit.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`read_checkpoint_file`; or a field
            JSON cannot hold.
    """
    meta, tensors = read_checkpoint_file(path)
    meta.update(fields)
    write_checkpoint_file(path, meta, tensors)


def attach_posture(path: str | Path, posture: PostureModel) -> None:
    """Add (or replace) the posture flows of a saved checkpoint
    (:mod:`forecasting.posture`); the rest of the checkpoint is kept as it is.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`read_checkpoint_file`.
    """
    meta, tensors = read_checkpoint_file(path)
    state = {k: v for k, v in tensors.items() if not k.startswith("posture.")}
    state.update({f"posture.{k}": v for k, v in posture.state_dict().items()})
    meta["posture"] = posture.cfg.to_dict()
    write_checkpoint_file(path, meta, state)


def _numpy_scalar_globals() -> list[Any]:
    """What torch's restricted unpickler needs to rebuild numpy scalars (old calibrations
    and histories may hold some): the scalar constructor and the dtypes."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64")]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def migrate_checkpoint(old: str | Path, new: str | Path) -> Path:
    """Convert a format-1 checkpoint (a ``torch.save`` pickle of earlier posewatch
    versions) to the current format, once. Run it only on files you trust: pickles can run
    code. The old file is read with torch's restricted unpickler (``weights_only=True``:
    tensors, plain containers and numpy scalars only), so a file holding anything else is
    refused rather than executed; the weights are copied bit for bit.

    Arguments:
        old: the format-1 checkpoint (left as it is).
        new: the file to write (must not exist).

    Returns:
        ``new``.

    Raises:
        FileNotFoundError: ``old`` does not exist.
        FileExistsError: ``new`` exists (choose another name or remove it).
        CheckpointError: ``old`` is already in the current format, is not a posewatch
            format-1 checkpoint, or holds Python objects beyond tensors and plain data.
    """
    old, new = Path(old), Path(new)
    if not old.exists():
        raise FileNotFoundError(f"{old}: no such checkpoint")
    if new.exists():
        raise FileExistsError(f"{new}: exists; give a new file name for the migrated checkpoint")
    try:
        read_checkpoint_file(old)
    except CheckpointError as exc:
        if not _is_pickle(old.read_bytes()[:8]):
            raise exc from None  # foreign or damaged: its message says what it is
    else:
        raise CheckpointError(f"{old}: already in checkpoint format {CHECKPOINT_VERSION}")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            blob = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{old}: refused: it holds more than tensors and plain data, which an old "
            f"posewatch checkpoint never did ({first[:200]}); do not use this file"
        ) from None
    if (
        not isinstance(blob, dict)
        or blob.get("format") != CHECKPOINT_FORMAT
        or not isinstance(blob.get("state_dict"), dict)
    ):
        raise CheckpointError(f"{old}: not a posewatch GRU-NF checkpoint; nothing migrated")
    if blob.get("format_version") != 1:
        raise CheckpointError(
            f"{old}: pickled checkpoint of format {blob.get('format_version')}, expected 1"
        )
    tensors = dict(blob.pop("state_dict"))
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError(f"{old}: its state dict holds something other than tensors")
    meta = {**blob, "migrated_from": {"format_version": 1, "file": old.name}}
    write_checkpoint_file(new, meta, tensors)
    try:
        load_checkpoint(new)  # the result must load
    except CheckpointError:
        new.unlink(missing_ok=True)
        raise
    return new


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "HEADER_KEY",
    "Checkpoint",
    "CheckpointError",
    "attach_posture",
    "code_version",
    "encode_checkpoint",
    "load_checkpoint",
    "migrate_checkpoint",
    "model_fingerprint",
    "read_checkpoint_file",
    "save_checkpoint",
    "update_checkpoint",
    "write_checkpoint_file",
]
