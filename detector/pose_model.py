"""YOLO-pose (Ultralytics) behind one call: ``PoseModel.predict(frames) -> [Detections]``.

- Weights from :func:`detector.weights.resolve_weights`.
- Device: CUDA when present (half precision there), else CPU.
- Backends: ``torch``; ``openvino`` and ``onnx`` (Ultralytics' own exports, made once and
  cached under ``~/.cache/posewatch/exports/<weights hash>-<imgsz>-<backend>/``); ``auto``
  picks ``torch`` on CUDA and ``openvino`` on CPU when it is installed (measured here: 12.6
  against 7.3 frames/s at 960 on 2 cores, same detections), else ``torch``.
- Several frames (from several cameras) go through one inference call.

Example:
    >>> BACKENDS
    ('auto', 'torch', 'openvino', 'onnx')
    >>> model = PoseModel(imgsz=960)  # doctest: +SKIP
    >>> dets = model.predict([frame_a, frame_b])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from detector.weights import cache_dir, file_hash, resolve_weights

log = logging.getLogger(__name__)

BackendName = Literal["auto", "torch", "openvino", "onnx"]
#: Every backend name, in :data:`BackendName` order (for config and CLI choices).
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
Backend = BackendName  # the former name

#: Default inference size. On vtest.avi (768x576, small people) yolo11n-pose at conf 0.25
#: finds 3.6 persons per frame at 960, 4.75 at 1088 and 5.5 at 1280 (measured here, every
#: 8th frame); 1088 is the smallest size that keeps 85% of what 1280 finds, at 72% of its
#: pixels. See docs/DECISIONS.md.
DEFAULT_IMGSZ = 1088


@dataclass(slots=True)
class Detections:
    """People found in one frame, before tracking.

    Attributes:
        boxes: ``(n, 4)`` float32 ``x1, y1, x2, y2`` pixels.
        scores: ``(n,)`` float32 detection confidence.
        keypoints: ``(n, 17, 3)`` float32 ``x, y, conf`` pixels; missing keypoints (NaN, NaN, 0).
        raw: the Ultralytics ``Boxes`` (numpy) the tracker consumes.
        image_size: ``(width, height)``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray
    raw: Any
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def pick_device() -> str:
    try:
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


class PoseModel:
    """An Ultralytics YOLO-pose model for batched inference.

    Arguments:
        weights: path or name (see :func:`resolve_weights`); None = yolo11n-pose.
        imgsz: inference image size (long side).
        backend: ``auto``, ``torch``, ``openvino`` or ``onnx``.
        device: ``cpu``, ``cuda:0``... or None (automatic).
        conf: detection confidence threshold (low: the tracker's second stage uses
            detections between this and its ``high`` threshold to keep tracks alive).
        kpt_conf: keypoints below this confidence are missing.
        half: half precision (default: on CUDA with torch).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        imgsz: int = DEFAULT_IMGSZ,
        backend: BackendName = "auto",
        device: str | None = None,
        conf: float = 0.1,
        kpt_conf: float = 0.3,
        half: bool | None = None,
    ):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        self.weights = resolve_weights(weights)
        self.imgsz = int(imgsz)
        self.device = device or pick_device()
        on_cuda = self.device.startswith("cuda")
        if backend == "auto":
            backend = "openvino" if not on_cuda and _has_module("openvino") else "torch"
        self.backend: BackendName = backend
        self.half = on_cuda and backend == "torch" if half is None else half
        self.conf = conf
        self.kpt_conf = kpt_conf
        path = self.weights
        if backend in ("openvino", "onnx") and self.weights.suffix == ".pt":
            path = self.export(backend)
        self.model = YOLO(str(path), task="pose")
        self.path = path

    def export(self, backend: Literal["openvino", "onnx"]) -> Path:
        """Export the weights once (cached by weights hash and image size) and return the file."""
        from ultralytics import YOLO

        key = f"{self.weights.stem}-{file_hash(self.weights)}-{self.imgsz}-{backend}"
        root = cache_dir() / "exports" / key
        target = root / (
            f"{self.weights.stem}_openvino_model"
            if backend == "openvino"
            else f"{self.weights.stem}.onnx"
        )
        if target.exists():
            return target
        root.mkdir(parents=True, exist_ok=True)
        # Exported in a private directory, then moved into place in one rename: no process
        # ever loads a half-written export, and processes exporting at once all succeed.
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=root))
        try:
            local = work / self.weights.name
            shutil.copy2(self.weights, local)
            log.info(
                "exporting %s to %s at imgsz %d (once; cached in %s)",
                self.weights.name,
                backend,
                self.imgsz,
                root,
            )
            with contextlib.redirect_stdout(None):
                out = YOLO(str(local)).export(
                    format=backend, imgsz=self.imgsz, dynamic=True, half=False, verbose=False
                )
            try:
                Path(out).rename(target)
            except OSError:
                if not target.exists():  # not another process's export that got there first
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def warmup(self, width: int = 1280, height: int = 720) -> None:
        """Run one inference on a blank frame: predictor setup, lazy imports and the backend's
        first-call compilation happen here instead of on a live camera's first frames."""
        self.predict([np.zeros((height, width, 3), np.uint8)])

    def predict(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        """Detect people and keypoints in a batch of BGR frames (one inference call)."""
        if not frames:
            return []
        kwargs: dict[str, Any] = {"half": True} if self.half else {}
        results = self.model.predict(
            list(frames),
            imgsz=self.imgsz,
            conf=self.conf,
            device=self.device,
            verbose=False,
            classes=[0],
            **kwargs,
        )
        return [self._convert(r) for r in results]

    def _convert(self, r: Any) -> Detections:
        h, w = r.orig_shape
        boxes = r.boxes.cpu().numpy()
        n = len(boxes)
        if n and r.keypoints is not None:
            kp = r.keypoints.data.cpu().numpy().astype(np.float32).reshape(n, 17, 3)
        else:
            kp = np.zeros((n, 17, 3), np.float32)
        low = (kp[..., 2] < self.kpt_conf) | ((kp[..., 0] == 0) & (kp[..., 1] == 0))
        kp[low, 0] = np.nan
        kp[low, 1] = np.nan
        kp[low, 2] = 0.0
        return Detections(
            boxes=boxes.xyxy.astype(np.float32).reshape(n, 4),
            scores=boxes.conf.astype(np.float32).reshape(n),
            keypoints=kp,
            raw=boxes,
            image_size=(int(w), int(h)),
        )
