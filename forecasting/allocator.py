"""One process-wide policy for glibc's ``malloc`` thresholds: a service bounds its heap,
batch work (training, offline scoring) keeps its freed memory.

PyTorch's CPU tensors come from glibc ``malloc``. Blocks above the mmap threshold are
mapped on each allocation and unmapped on each free, and free heap memory above the trim
threshold is handed back to the kernel: each training step then maps and faults in its
activations afresh. Two needs pull the thresholds opposite ways:

- a long-running service (:func:`bound_heap_growth`) serves frames and input tensors of
  1-10 MB: with glibc's dynamic threshold they come from the heap after the first large
  free, which fragments (a 4-camera ``posewatch detect`` grew ~1.4 GB/min, measured; flat at
  1.27 GB with a fixed 512 KiB threshold);
- batch work (:func:`retain_freed_memory`): training the posture flows with the fixed 512
  KiB threshold made ~650,000 minor page faults a second and spent ~45% of the machine in
  the kernel; with the thresholds raised, ~200x fewer faults than under that bound and ~50x
  fewer than under glibc's own thresholds (``tests/forecasting/test_allocator.py``).

The service's bound wins: once a process has called :func:`bound_heap_growth`, a later
:func:`retain_freed_memory` (a camera's cold-start calibration, which scores in that
service) leaves the thresholds alone, so the service's memory stays bounded. Cold-start
training runs in a child process of its own, which keeps its freed memory
(``pipelines.scene_training``).

Example:
    >>> bound_heap_growth()  # a service, at start  # doctest: +SKIP
    True
    >>> retain_freed_memory()  # doctest: +SKIP
    False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Batch work: blocks up to this size come from the heap (32 MiB: the most glibc accepts on
#: 64-bit, half its 64 MiB per-thread heap); larger ones are still mapped.
RETAIN_MMAP_THRESHOLD = 32 * 1024 * 1024
#: Batch work: free heap memory above this is returned to the kernel (1 GiB).
RETAIN_TRIM_THRESHOLD = 1024 * 1024 * 1024

#: glibc's default trim threshold (128 KiB), which a service keeps.
TRIM_DEFAULT = 128 * 1024

_lock = threading.Lock()
_mode: str | None = None  # "bounded", "retained", "user" (MALLOC_* set) or "unavailable"


def _mallopt(*settings: tuple[int, int]) -> bool:
    """``mallopt(param, value)`` for each pair; False where glibc's is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return all([bool(fn(param, value)) for param, value in settings])


def bound_heap_growth(threshold: int = 512 * 1024) -> bool:
    """Serve allocations above ``threshold`` bytes (frames, input tensors) with mmap, always
    (a service, before its main loop), and free heap memory above 128 KiB back to the kernel
    (glibc's default); later :func:`retain_freed_memory` calls in this process do nothing.

    Returns:
        True when set, False where glibc's ``mallopt`` is unavailable.
    """
    global _mode
    with _lock:
        _mode = "bounded"
        # glibc's own trim threshold, in case batch work in this process had raised it
        return _mallopt((M_MMAP_THRESHOLD, int(threshold)), (M_TRIM_THRESHOLD, TRIM_DEFAULT))


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for batch work, once per process.

    Does nothing in a process that bounded its heap (:func:`bound_heap_growth`: a service)
    or where the user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (their
    choice wins). The cost: the process keeps its peak heap instead of shrinking after it.

    Returns:
        True when the thresholds are raised (now or by an earlier call), False otherwise.
    """
    global _mode
    mode = _mode  # decided once: later calls (a scoring batch in a service) take no lock
    if mode is not None:
        return mode == "retained"
    with _lock:
        if _mode is not None:
            return _mode == "retained"
        if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
            _mode = "user"
            return False
        ok = _mallopt(
            (M_MMAP_THRESHOLD, RETAIN_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, RETAIN_TRIM_THRESHOLD)
        )
        _mode = "retained" if ok else "unavailable"
        return ok


__all__ = ["bound_heap_growth", "retain_freed_memory"]
