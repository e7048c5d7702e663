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

from detector.pose import (
    CAMERA_NAME,
    MAX_FPS,
    MAX_FRAME_INDEX,
    MAX_IMAGE_SIDE,
    MAX_TRACK_ID,
    MIN_FPS,
    PoseFrame,
    Track,
    zero_missing,
)
from detector.skeleton import NUM_KEYPOINTS

#: Frame keys of an STG-NF file are frame numbers of one clip, below this (10**7: about
#: 92 h at 30 fps); evaluation allocates arrays as long as a clip.
MAX_CLIP_FRAMES = 10**7
#: A PoseFrame's coordinates (keypoints and box) must lie within ``-COORD_RANGE[0]`` to
#: ``COORD_RANGE[1]`` times its image size: off-image a little (tracked boxes, keypoints
#: guessed past the border), never far.
COORD_RANGE = (1.0, 2.0)
#: Largest keypoint confidence a PoseFrame may carry: estimators give 0..1, AlphaPose's
#: heatmap peaks a little more (AIHub2: up to 1.062).
MAX_CONFIDENCE = 1.5
#: A pose file's coordinates (no image size to check against) must lie within +- this many
#: pixels: far beyond any camera; a larger value is another unit or damage (1e300 would
#: silently turn into a "missing" keypoint as float32).
MAX_PIXELS = 100_000.0


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
            where.append(f"person {_shown(person)}")
        if frame is not None:
            where.append(f"frame {_shown(frame)}")
        super().__init__(f"{': '.join([', '.join(where), what])}")
        self.path = str(path)
        self.person = person
        self.frame = frame
        self.line = line


#: Why a document that ``json`` gives up on with a RecursionError is refused.
_TOO_DEEP = "arrays or objects nested too deeply; not a pose file"


def _shown(text: str, most: int = 40) -> str:
    """``repr(text)``, cut to ``most`` characters (a key can be 10 kB long)."""
    return repr(text) if len(text) <= most else f"{text[:most]!r}... ({len(text):,} characters)"


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
    kp = arr.reshape(NUM_KEYPOINTS, 3)
    far = float(np.abs(kp[:, :2]).max())
    if far > MAX_PIXELS:
        raise PoseFileError(
            path,
            f"'keypoints' holds the coordinate {far:g}, beyond +-{MAX_PIXELS:g} pixels: not a "
            "pixel position (convert normalised or other units to pixels)",
            person,
            frame,
        )
    if "scores" not in entry:
        raise PoseFileError(path, "missing 'scores' (the detection score)", person, frame)
    score = entry["scores"]
    if isinstance(score, list) and len(score) == 1:
        score = score[0]
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise PoseFileError(path, f"'scores' must be a finite number, got {score!r}", person, frame)
    return arr.reshape(NUM_KEYPOINTS, 3).astype(np.float32), float(score)


def _epoch_hint(value: int) -> str:
    """What a too-large frame number probably is (``""`` when nothing obvious)."""
    for lo, unit in ((10**15, "microseconds"), (10**12, "milliseconds"), (10**9, "seconds")):
        if lo <= value < lo * 100:
            return f" (it looks like an epoch time in {unit})"
    return ""


def _frame_key(path: Path, person: str, frame: str) -> int:
    """The frame number a frame key names; :class:`PoseFileError` when it is none."""
    try:
        fidx = int(frame)
    except ValueError:
        if not frame.strip().isdigit():
            raise PoseFileError(path, "frame index is not an integer", person, frame) from None
        fidx = MAX_CLIP_FRAMES  # more digits than Python converts: far too large
    if fidx < 0:
        raise PoseFileError(path, "frame index is negative", person, frame)
    if fidx >= MAX_CLIP_FRAMES:
        raise PoseFileError(
            path,
            f"frame key {_shown(frame)} is not a frame index{_epoch_hint(fidx)}: the keys of a "
            f"person must be the clip's frame numbers, 0 to {MAX_CLIP_FRAMES - 1:,}; "
            "renumber the frames from 0",
            person,
            frame,
        )
    return fidx


def _layout_hint(data: Any) -> str:
    """Why a decoded object that is not an STG-NF object of persons is not one, and what
    to do; ``""`` when it is not a layout we recognise."""
    items = (
        data
        if isinstance(data, list)
        else data.get("annotations")
        if isinstance(data, dict)
        else None
    )
    if not isinstance(items, list):
        return ""
    dets = [d for d in items[:100] if isinstance(d, dict)]
    todo = (
        "posewatch needs tracked poses (one object per person, frames as keys): run "
        "`posewatch extract VIDEO` on the video, which detects and tracks the people and "
        "writes this layout"
    )
    if isinstance(data, dict):
        return (
            f"this is a COCO keypoint file ({len(items)} annotations of still images), not "
            f"the tracked STG-NF layout; {todo}"
        )
    if dets and all("keypoints" in d and "image_id" in d for d in dets):
        n = {len(d["keypoints"]) for d in dets if isinstance(d["keypoints"], list)}
        kp = f"{sorted(n)[0] // 3} keypoints" if len(n) == 1 else "keypoints"
        if all("idx" in d for d in dets):
            return (
                f"this is AlphaPose's raw output tracked by PoseFlow ({len(items)} detections "
                f"with image_id, idx and {kp}, as a list), not the STG-NF layout; regroup it "
                "per person (idx) and frame (image_id), or run `posewatch extract VIDEO` on "
                "the video"
            )
        return (
            f"this is AlphaPose's raw, untracked output ({len(items)} detections with "
            f"image_id and {kp}, as a list): nothing says which detections are the same "
            f"person; {todo}"
        )
    if dets and all("frame_index" in d and "persons" in d for d in dets):
        return (
            f"this is a JSON list of {len(items)} PoseFrames; write them one per line as "
            "JSON lines (.jsonl), which posewatch reads as such"
        )
    return ""


def parse_stgnf(path: str | Path, data: Any) -> dict[int, Track]:
    """Parse an already-decoded STG-NF object (see :func:`read_stgnf`)."""
    path = Path(path)
    hint = _layout_hint(data)
    if not isinstance(data, dict) or hint:
        what = f"top level must be an object of persons, got {type(data).__name__}"
        raise PoseFileError(path, f"{what}: {hint}" if hint else what)
    tracks: dict[int, Track] = {}
    for person, frames in data.items():
        try:
            tid = int(person)
        except ValueError:
            if not person.strip().isdigit():
                raise PoseFileError(path, "person id is not an integer", person) from None
            tid = MAX_TRACK_ID + 1
        if not 0 <= tid <= MAX_TRACK_ID:
            raise PoseFileError(path, f"person id outside 0 .. {MAX_TRACK_ID}", person)
        if not isinstance(frames, dict):
            raise PoseFileError(
                path, f"expected an object of frames, got {type(frames).__name__}", person
            )
        if not frames:
            raise PoseFileError(path, "person has no frames", person)
        rows: dict[int, tuple[np.ndarray, float]] = {}
        for frame, entry in frames.items():
            fidx = _frame_key(path, person, frame)
            if fidx in rows:
                raise PoseFileError(path, "frame index appears twice", person, frame)
            rows[fidx] = _parse_entry(path, person, frame, entry)
        if tid in tracks:
            raise PoseFileError(path, "person id appears twice", person)
        try:
            tracks[tid] = Track.from_rows(tid, rows)
        except ValueError as exc:  # spans too many frames
            raise PoseFileError(path, str(exc), person) from exc
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
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise PoseFileError(path, f"invalid JSON ({exc})") from exc
    except RecursionError as exc:  # e.g. "[" * 100000: nested deeper than Python recurses
        raise PoseFileError(path, f"invalid JSON ({_TOO_DEEP})") from exc
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
    except ValueError as exc:  # not JSON, or an integer of more than 4300 digits
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise PoseFileError(path, f"invalid JSON ({msg}); truncated?", line=lineno) from exc
    except RecursionError as exc:  # e.g. "[" * 100000: nested deeper than Python recurses
        raise PoseFileError(path, f"invalid JSON ({_TOO_DEEP})", line=lineno) from exc
    if not isinstance(data, dict):
        raise PoseFileError(path, "expected a PoseFrame object", line=lineno)
    frame = str(data.get("frame_index", "?"))[:40]
    for key in ("camera", "frame_index", "timestamp", "image_size", "persons"):
        if key not in data:
            raise PoseFileError(path, f"missing {key!r}", frame=frame, line=lineno)
    try:
        _check_frame_fields(data)
    except ValueError as exc:
        raise PoseFileError(path, str(exc), frame=frame, line=lineno) from exc
    w, h = (int(v) for v in data["image_size"])
    for i, p in enumerate(data["persons"]):
        person = str(p.get("track_id", f"#{i}"))[:40] if isinstance(p, dict) else f"#{i}"
        try:
            _check_person(p, w, h)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise PoseFileError(path, what, person=person, frame=frame, line=lineno) from exc
    try:
        return PoseFrame.from_dict(data)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise PoseFileError(path, f"not a PoseFrame ({exc})", frame=frame, line=lineno) from exc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_frame_fields(data: dict[str, Any]) -> None:
    """The frame-level fields of a PoseFrame object; ``ValueError`` naming the field."""
    cam = data["camera"]
    if not isinstance(cam, str) or not CAMERA_NAME.fullmatch(cam):
        shown = cam[:80] if isinstance(cam, str) else cam
        raise ValueError(
            f"camera name {shown!r} is not valid (letters, digits, '_', '.', '-', "
            "at most 64; not '.' or '..')"
        )
    idx = data["frame_index"]
    if not _is_int(idx) or not 0 <= idx <= MAX_FRAME_INDEX:
        raise ValueError(
            f"frame_index {str(idx)[:40]} is not an integer in 0 .. {MAX_FRAME_INDEX:,}"
        )
    ts = data["timestamp"]
    if not _is_number(ts) or not math.isfinite(ts) or ts < 0:
        raise ValueError(f"timestamp {str(ts)[:40]} is not a finite number >= 0 (seconds)")
    fps = data.get("fps")
    if fps is not None and (not _is_number(fps) or not MIN_FPS <= fps <= MAX_FPS):
        raise ValueError(f"fps {str(fps)[:40]} is not a frame rate in {MIN_FPS} .. {MAX_FPS:g} (frames/s)")  # fmt: skip
    size = data["image_size"]
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(_is_int(v) and 0 < v <= MAX_IMAGE_SIDE for v in size)
    ):
        shown = tuple(size) if isinstance(size, list) else size
        raise ValueError(f"image_size {str(shown)[:60]} outside 1..{MAX_IMAGE_SIDE} pixels")
    if not isinstance(data["persons"], list):
        raise ValueError("'persons' must be a list")


def _check_person(p: Any, w: int, h: int) -> None:
    """One person of a PoseFrame object in an image of ``w`` x ``h`` pixels; ``ValueError``
    (or ``KeyError`` / ``TypeError``) naming the field and the value."""
    if not isinstance(p, dict):
        raise TypeError(f"a person must be an object, got {type(p).__name__}")
    tid = p["track_id"]
    if not _is_int(tid) or not -1 <= tid <= MAX_TRACK_ID:
        raise ValueError(f"track_id {str(tid)[:40]} is not an integer in -1 .. {MAX_TRACK_ID}")
    score = p["score"]
    if not _is_number(score) or not math.isfinite(score):
        raise ValueError(f"score {str(score)[:40]} is not a finite number")
    try:
        kp = np.asarray(p["keypoints"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"keypoints must be 17 x [x, y, c] numbers ({exc})") from exc
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be 17 x [x, y, c], got shape {kp.shape}")
    try:
        box = np.asarray(p["bbox"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bbox must have 4 numbers ({exc})") from exc
    if box.shape != (4,):
        raise ValueError("bbox must have 4 numbers")
    lo = -COORD_RANGE[0] * np.array([w, h], np.float64)
    hi = COORD_RANGE[1] * np.array([w, h], np.float64)
    for name, xy in (
        ("bbox", box.reshape(2, 2)),
        *((f"keypoint {j}", kp[j, :2]) for j in range(17)),
    ):
        if name != "bbox" and np.isnan(xy).all():
            continue  # a missing keypoint (NaN, NaN, c)
        if not (np.isfinite(xy).all() and (xy >= lo).all() and (xy <= hi).all()):
            raise ValueError(
                f"{name} at {xy.round(2).tolist()} is not finite or lies outside "
                f"x {lo[0]:g} .. {hi[0]:g}, y {lo[1]:g} .. {hi[1]:g} (-{COORD_RANGE[0]:g} to "
                f"{COORD_RANGE[1]:g} times the image size {w} x {h})"
            )
    conf = kp[:, 2]
    bad = ~((conf >= 0) & (conf <= MAX_CONFIDENCE))  # NaN fails too
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"keypoint {j} confidence {conf[j]:g} is outside 0 .. {MAX_CONFIDENCE:g}")


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
