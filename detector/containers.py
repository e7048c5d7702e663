"""What a video file's container says about itself, read from its bytes without decoding.

OpenCV reports a frame count and a frame rate but not whether they can be trusted: an AVI
whose header over-states its frame count reads exactly like a file cut off mid-way, and an
AVI whose header rate is 0 reads as FFmpeg's default of 25 fps. This module answers the two
questions from the container structure itself:

- :func:`check_container`: does the file end where its structure says it should
  (``truncated`` True / False, or None when the format cannot tell), and does the format
  carry per-frame timestamps of its own;
- :func:`avi_frame_rate`: the frame rate an AVI header states (``dwRate / dwScale`` of its
  first video stream), 0 when the header states none.

Formats read: AVI (RIFF chunk sizes), MP4 / MOV (ISO base media box sizes), Matroska /
WebM (the Segment's size), FLV (the last tag's back-pointer) and MPEG-TS (whole 188-byte
packets); MPEG program streams are recognised (timestamped, ``truncated`` None); anything
else is ``unknown`` (``truncated`` None).

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.avi"
    >>> _ = p.write_bytes(b"RIFF" + (100).to_bytes(4, "little") + b"AVI " + bytes(20))
    >>> c = check_container(p)
    >>> (c.kind, c.truncated)
    ('avi', True)
    >>> print(c.detail)
    the RIFF chunk at byte 0 declares 108 bytes but the file ends after 32: it is truncated
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: ISO base media (MP4, MOV, 3GP) top-level box types a file may start with.
_ISO_FIRST = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"styp"}
#: Formats whose frames carry their own presentation timestamps.
_TIMESTAMPED = {"mp4", "matroska", "flv", "mpegts", "mpegps"}


@dataclass(frozen=True, slots=True)
class ContainerCheck:
    """What :func:`check_container` found.

    Attributes:
        kind: ``avi``, ``mp4``, ``matroska``, ``flv``, ``mpegts``, ``mpegps`` or
            ``unknown``.
        truncated: True when the file ends before its structure does, False when the
            structure ends within the file, None when the format cannot tell.
        detail: one sentence saying what was found (for messages).
        timestamps: the format stores a timestamp per frame (so a frame rate derived from
            them is the file's own, not a decoder's default).
    """

    kind: str
    truncated: bool | None
    detail: str
    timestamps: bool


def _cut(kind: str, what: str, offset: int, declared: int, size: int) -> ContainerCheck:
    return ContainerCheck(
        kind,
        True,
        f"the {what} at byte {offset:,} declares {declared:,} bytes but the file ends after "
        f"{size - offset:,}: it is truncated",
        kind in _TIMESTAMPED,
    )


def _whole(kind: str, detail: str) -> ContainerCheck:
    return ContainerCheck(kind, False, detail, kind in _TIMESTAMPED)


def _check_riff(fh: BinaryIO, size: int) -> ContainerCheck:
    """AVI: a sequence of RIFF chunks (``AVI `` then OpenDML ``AVIX``), each ``RIFF`` +
    32-bit little-endian size + data (padded to even)."""
    offset = 0
    while offset + 8 <= size:
        fh.seek(offset)
        head = fh.read(8)
        if head[:4] != b"RIFF":
            break  # trailing bytes after the last chunk
        (n,) = struct.unpack("<I", head[4:8])
        if n in (0, 0xFFFFFFFF):
            return ContainerCheck("avi", None, "the RIFF size was never written", False)
        if offset + 8 + n > size:
            return _cut("avi", "RIFF chunk", offset, 8 + n, size)
        offset += 8 + n + (n & 1)
    return _whole("avi", f"its RIFF chunks end within the file ({size:,} bytes)")


def _check_iso(fh: BinaryIO, size: int) -> ContainerCheck:
    """MP4 / MOV: top-level boxes, 32-bit big-endian size (1: a 64-bit size follows, 0: to
    the end of the file) + type."""
    offset, seen = 0, set()
    while offset + 8 <= size:
        fh.seek(offset)
        head = fh.read(16)
        (n,) = struct.unpack(">I", head[:4])
        box = head[4:8]
        seen.add(box)
        if n == 1 and len(head) == 16:
            (n,) = struct.unpack(">Q", head[8:16])
        elif n == 0:
            n = size - offset
        if n < 8:
            return ContainerCheck("mp4", None, f"box {box!r} at byte {offset:,} is malformed", True)
        if offset + n > size:
            return _cut("mp4", f"{box.decode('latin-1')!r} box", offset, n, size)
        offset += n
    if b"moov" not in seen:
        return ContainerCheck(
            "mp4",
            True,
            "it has no 'moov' box (the index an MP4 writer adds last): the recording was not "
            "finished",
            True,
        )
    return _whole("mp4", f"its boxes end within the file ({size:,} bytes)")


def _vint(fh: BinaryIO, strip: bool) -> tuple[int, int] | None:
    """An EBML variable-size integer: (value, bytes read); None when malformed."""
    b = fh.read(1)
    if not b:
        return None
    first = b[0]
    length = 1
    while length <= 8 and not first & (0x80 >> (length - 1)):
        length += 1
    if length > 8:
        return None
    rest = fh.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = (first & (0xFF >> length)) if strip else first
    for c in rest:
        value = (value << 8) | c
    return value, length


def _check_ebml(fh: BinaryIO, size: int) -> ContainerCheck:
    """Matroska / WebM: the EBML header element, then the Segment with its size."""
    fh.seek(4)
    head = _vint(fh, True)
    if head is None:
        return ContainerCheck("matroska", None, "its EBML header is malformed", True)
    fh.seek(4 + head[1] + head[0])
    ident, seg = _vint(fh, False), None
    if ident is not None and ident[0] == 0x18538067:
        seg = _vint(fh, True)
    if ident is None or seg is None:
        return ContainerCheck("matroska", None, "no Segment follows its EBML header", True)
    start = fh.tell()
    n, width = seg
    if n == (1 << (7 * width)) - 1:
        return ContainerCheck("matroska", None, "its Segment size is unknown (live)", True)
    if start + n > size:
        return _cut("matroska", "Segment", start, n, size)
    return _whole("matroska", f"its Segment ends within the file ({size:,} bytes)")


def _check_flv(fh: BinaryIO, size: int) -> ContainerCheck:
    """FLV: every tag is followed by its own size; the last one must point at a whole tag."""
    fh.seek(size - 4)
    (n,) = struct.unpack(">I", fh.read(4))
    start = size - 4 - n
    if n >= 11 and start >= 13:
        fh.seek(start)
        tag = fh.read(11)
        if tag[0] & 0x1F in (8, 9, 18) and int.from_bytes(tag[1:4], "big") == n - 11:
            return _whole("flv", "its last tag is whole")
    return ContainerCheck("flv", True, "its last tag is cut off: it is truncated", True)


def check_container(path: str | Path) -> ContainerCheck:
    """Whether ``path`` ends where its container structure says it should.

    Reads a few bytes per top-level element (a few kB for a normal file), never the frames.

    Raises:
        OSError: the file cannot be read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        magic = fh.read(12)
        if magic[:4] == b"RIFF" and magic[8:12] == b"AVI ":
            return _check_riff(fh, size)
        if magic[4:8] in _ISO_FIRST:
            return _check_iso(fh, size)
        if magic[:4] == b"\x1a\x45\xdf\xa3":
            return _check_ebml(fh, size)
        if magic[:3] == b"FLV" and size >= 17:
            return _check_flv(fh, size)
        if magic[:1] == b"\x47" and size > 188:
            fh.seek(188)
            if fh.read(1) == b"\x47":
                if size % 188:
                    return ContainerCheck(
                        "mpegts", True, "it ends inside a 188-byte packet: truncated", True
                    )
                return ContainerCheck("mpegts", None, "an MPEG-TS has no end marker", True)
        if magic[:4] == b"\x00\x00\x01\xba":
            return ContainerCheck("mpegps", None, "an MPEG program stream has no end marker", True)
    return ContainerCheck(
        "unknown", None, "its container format is not one posewatch checks", False
    )


def avi_frame_rate(path: str | Path) -> float | None:
    """The frame rate an AVI states for its first video stream (``dwRate / dwScale`` of
    its ``strh`` header), 0.0 when either is 0; None when ``path`` is not an AVI or has no
    video stream header in its first 64 kB."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    at = head.find(b"strh")
    while at >= 0 and head[at + 8 : at + 12] != b"vids":
        at = head.find(b"strh", at + 4)
    if at < 0 or at + 36 > len(head):
        return None
    scale, rate = struct.unpack("<II", head[at + 28 : at + 36])
    return rate / scale if scale and rate else 0.0
