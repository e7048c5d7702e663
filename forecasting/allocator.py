"""Keep freed tensor memory in the process instead of handing it back to the kernel.

PyTorch's CPU tensors come from glibc ``malloc``. Blocks above glibc's mmap threshold
(128 KiB at start, raised only as far as the size of blocks freed so far) are mapped on each
allocation and unmapped on each free, and heap memory above the trim threshold is returned
at every free: each training step then maps and faults in its activations afresh. Measured
here (torch 2.14.1, 2 cores): training the posture flows made about 650,000 minor page faults
a second and spent ~45% of the machine's time in the kernel, about 3x slower than with the
thresholds raised (``docs/DECISIONS.md``). :func:`retain_freed_memory` raises both
thresholds, as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would at process
start; the cost is that the process keeps its peak heap instead of shrinking after it.

Example:
    >>> retain_freed_memory()  # glibc (Linux), no MALLOC_*_THRESHOLD_ in the environment
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap; larger ones are still mapped (32 MiB: the
#: most glibc accepts on 64-bit, half its 64 MiB per-thread heap).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free heap memory above this is returned to the kernel (1 GiB).
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (idempotent, thread-safe
    enough: a second concurrent call repeats the same two ``mallopt`` calls).

    Left as they are where the user set ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` (their choice wins) or the C library is not glibc.

    Returns:
        True when the thresholds are set (now or by an earlier call), False otherwise.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done


__all__ = ["retain_freed_memory"]
