"""Pose files: the STG-NF JSON layout (``.json`` / ``.json.gz``) and JSON lines of PoseFrames.

STG-NF layout (AlphaPose + PoseFlow output as STG-NF, GEPC and their forks read it)::

    {"<person_id>": {"<frame_index, zero-padded>": {"keypoints": [x, y, c] * 17, "scores": s}}}

JSON lines: one :meth:`PoseFrame.to_dict` object per line.

Every reader fails with :class:`PoseFileError`, naming the file, the person, the frame and
what is wrong; an empty or truncated file is an error, never an empty result.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> kp = np.ones((17, 3), np.float32)
    >>> tr = Track.from_rows(1, {0: (kp, 0.9), 2: (kp, 0.8)})
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "clip.json"
    >>> write_stgnf(path, {1: tr})
    >>> back = read_stgnf(path)[1]
    >>> back.frames.tolist(), back.present.tolist()
    ([0, 1, 2], [True, False, True])
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from detector.pose import CAMERA_NAME, MAX_IMAGE_SIDE, PoseFrame, Track, zero_missing
from detector.skeleton import NUM_KEYPOINTS


class PoseFileError(ValueError):
    """A pose file cannot be read; the message names the file, person, frame and the fault."""

    def __init__(
        self,
        path: str | Path,
        what: str,
        person: str | None = None,
        frame: str | None = None,
        line: int | None = None,
    ) -> None:
        where = [f"{path}"]
        if line is not None:
            where.append(f"line {line}")
        if person is not None:
            where.append(f"person {person!r}")
        if frame is not None:
            where.append(f"frame {frame!r}")
        super().__init__(f"{': '.join([', '.join(where), what])}")
        self.path = str(path)
        self.person = person
        self.frame = frame
        self.line = line


def _open_text(path: Path, mode: str, gz: bool | None = None) -> IO[str]:
    if path.name.endswith(".gz") if gz is None else gz:
        return cast(IO[str], gzip.open(path, mode + "t", encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def _read_text(path: Path) -> str:
    if not path.exists():
        raise PoseFileError(path, "file does not exist")
    try:
        with _open_text(path, "r") as fh:
            return fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PoseFileError(path, f"cannot read ({exc}); is the file truncated?") from exc


def _parse_entry(path: Path, person: str, frame: str, entry: Any) -> tuple[np.ndarray, float]:
    if not isinstance(entry, dict):
        raise PoseFileError(path, f"expected an object, got {type(entry).__name__}", person, frame)
    if "keypoints" not in entry:
        raise PoseFileError(path, "missing 'keypoints'", person, frame)
    kps = entry["keypoints"]
    if not isinstance(kps, list) or len(kps) != NUM_KEYPOINTS * 3:
        n = len(kps) if isinstance(kps, list) else type(kps).__name__
        raise PoseFileError(
            path,
            f"'keypoints' must be a list of 51 numbers (17 x [x, y, c]), got {n}",
            person,
            frame,
        )
    try:
        arr = np.asarray(kps, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(path, f"'keypoints' holds a non-number ({exc})", person, frame) from exc
    if not np.isfinite(arr).all():
        raise PoseFileError(path, "'keypoints' holds NaN or infinity", person, frame)
    if "scores" not in entry:
        raise PoseFileError(path, "missing 'scores' (the detection score)", person, frame)
    score = entry["scores"]
    if isinstance(score, list) and len(score) == 1:
        score = score[0]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise PoseFileError(path, f"'scores' must be a finite number, got {score!r}", person, frame)
    return arr.reshape(NUM_KEYPOINTS, 3).astype(np.float32), float(score)


def parse_stgnf(path: str | Path, data: Any) -> dict[int, Track]:
    """Parse an already-decoded STG-NF object (see :func:`read_stgnf`)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise PoseFileError(
            path, f"top level must be an object of persons, got {type(data).__name__}"
        )
    tracks: dict[int, Track] = {}
    for person, frames in data.items():
        try:
            tid = int(person)
        except ValueError:
            raise PoseFileError(path, "person id is not an integer", person) from None
        if not isinstance(frames, dict):
            raise PoseFileError(
                path, f"expected an object of frames, got {type(frames).__name__}", person
            )
        if not frames:
            raise PoseFileError(path, "person has no frames", person)
        rows: dict[int, tuple[np.ndarray, float]] = {}
        for frame, entry in frames.items():
            try:
                fidx = int(frame)
            except ValueError:
                raise PoseFileError(path, "frame index is not an integer", person, frame) from None
            if fidx < 0:
                raise PoseFileError(path, "frame index is negative", person, frame)
            if fidx in rows:
                raise PoseFileError(path, "frame index appears twice", person, frame)
            rows[fidx] = _parse_entry(path, person, frame, entry)
        if tid in tracks:
            raise PoseFileError(path, "person id appears twice", person)
        tracks[tid] = Track.from_rows(tid, rows)
    return tracks


def read_stgnf(path: str | Path) -> dict[int, Track]:
    """Read an STG-NF JSON pose file (``.json`` or ``.json.gz``).

    Arguments:
        path: the file.

    Returns:
        ``{person_id: Track}``; ``(0, 0)`` keypoints become missing (NaN).

    Raises:
        PoseFileError: empty, truncated or malformed file (names person, frame and fault).
    """
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise PoseFileError(path, "file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoseFileError(
            path, f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); truncated?"
        ) from exc
    return parse_stgnf(path, data)


def stgnf_object(tracks: Mapping[int, Track]) -> dict[str, dict[str, dict[str, Any]]]:
    """The STG-NF JSON object for ``tracks`` (missing keypoints written as 0, 0, 0)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for tid, tr in sorted(tracks.items()):
        frames: dict[str, dict[str, Any]] = {}
        for f, (kp, score) in tr.rows().items():
            frames[f"{f:04d}"] = {
                "keypoints": [float(v) for v in zero_missing(kp).reshape(-1)],
                "scores": 0.0 if math.isnan(score) else score,
            }
        if frames:
            out[str(tid)] = frames
    return out


def write_stgnf(path: str | Path, tracks: Mapping[int, Track]) -> None:
    """Write tracks as an STG-NF JSON file (gzip when the name ends in ``.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with _open_text(tmp, "w", gz=path.name.endswith(".gz")) as fh:
        json.dump(stgnf_object(tracks), fh, separators=(",", ":"))
    tmp.replace(path)


def iter_jsonl(path: str | Path) -> Iterator[PoseFrame]:
    """Stream :class:`PoseFrame`s from a JSON-lines file (``.jsonl`` or ``.jsonl.gz``).

    Raises:
        PoseFileError: empty file, a line that is not JSON (e.g. a truncated last line) or
            not a valid PoseFrame; names the line, the person and the frame.
    """
    path = Path(path)
    if not path.exists():
        raise PoseFileError(path, "file does not exist")
    n = 0
    try:
        with _open_text(path, "r") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                n += 1
                yield _parse_jsonl_line(path, lineno, line)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PoseFileError(path, f"cannot read ({exc}); is the file truncated?") from exc
    if n == 0:
        raise PoseFileError(path, "file is empty")


def decode_poseframe(raw: bytes | str, source: str = "message") -> PoseFrame:
    """Parse and validate one PoseFrame JSON document (e.g. a ``posewatch.poses`` message).

    Raises:
        PoseFileError: not UTF-8, not JSON or not a valid PoseFrame; names ``source``, the
            person and the frame.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PoseFileError(source, f"not UTF-8 text ({exc.reason})") from exc
    return _parse_jsonl_line(Path(source), None, raw)


def _parse_jsonl_line(path: Path, lineno: int | None, line: str) -> PoseFrame:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PoseFileError(path, f"invalid JSON ({exc.msg}); truncated?", line=lineno) from exc
    if not isinstance(data, dict):
        raise PoseFileError(path, "expected a PoseFrame object", line=lineno)
    frame = str(data.get("frame_index", "?"))
    for key in ("camera", "frame_index", "timestamp", "image_size", "persons"):
        if key not in data:
            raise PoseFileError(path, f"missing {key!r}", frame=frame, line=lineno)
    if not isinstance(data["persons"], list):
        raise PoseFileError(path, "'persons' must be a list", frame=frame, line=lineno)
    for i, p in enumerate(data["persons"]):
        person = str(p.get("track_id", f"#{i}")) if isinstance(p, dict) else f"#{i}"
        try:
            kp = np.asarray(p["keypoints"], dtype=np.float32)
            if kp.shape != (NUM_KEYPOINTS, 3):
                raise ValueError(f"keypoints must be 17 x [x, y, c], got shape {kp.shape}")
            if len(p["bbox"]) != 4:
                raise ValueError("bbox must have 4 numbers")
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise PoseFileError(path, what, person=person, frame=frame, line=lineno) from exc
    try:
        pf = PoseFrame.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise PoseFileError(path, f"not a PoseFrame ({exc})", frame=frame, line=lineno) from exc
    if not CAMERA_NAME.fullmatch(pf.camera):
        raise PoseFileError(
            path,
            f"camera name {pf.camera[:80]!r} is not valid (letters, digits, '_', '.', '-', "
            "at most 64; not '.' or '..')",
            frame=frame,
            line=lineno,
        )
    if not all(0 < v <= MAX_IMAGE_SIDE for v in pf.image_size):
        raise PoseFileError(
            path,
            f"image_size {pf.image_size} outside 1..{MAX_IMAGE_SIDE} pixels",
            frame=frame,
            line=lineno,
        )
    return pf


def read_jsonl(path: str | Path) -> list[PoseFrame]:
    """Read every :class:`PoseFrame` of a JSON-lines file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, frames: Iterable[PoseFrame]) -> int:
    """Write pose frames as JSON lines; returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with _open_text(tmp, "w", gz=path.name.endswith(".gz")) as fh:
        for fr in frames:
            fh.write(json.dumps(fr.to_dict(), separators=(",", ":")))
            fh.write("\n")
            n += 1
    tmp.replace(path)
    return n
