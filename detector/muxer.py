"""Batching frames of several cameras into one inference call (DeepStream's stream muxer).

A batch fills up to ``batch_size`` frames or until ``timeout`` seconds have passed since its
first frame, whichever comes first. Cameras are polled round-robin so a fast file cannot
starve a live camera; frames of one camera stay in order.

Example:
    >>> mux = FrameMuxer([], batch_size=4)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from detector.sources import CameraSource, Frame


class FrameMuxer:
    """Round-robin batcher over camera sources.

    Arguments:
        sources: the cameras.
        batch_size: most frames per batch.
        timeout: longest wait (s) for a batch to fill once it has a frame.
        poll: sleep (s) between polls when no camera has a frame.
    """

    def __init__(
        self,
        sources: Sequence[CameraSource],
        batch_size: int = 4,
        timeout: float = 0.02,
        poll: float = 0.002,
    ):
        self.sources = list(sources)
        self.batch_size = max(1, batch_size)
        self.timeout = timeout
        self.poll = poll
        self._next = 0

    @property
    def done(self) -> bool:
        """Every source has ended and been drained."""
        return all(s.done for s in self.sources)

    def next_batch(self, idle_timeout: float = 1.0) -> list[Frame]:
        """Up to ``batch_size`` frames; empty after ``idle_timeout`` s with nothing, or when done."""
        batch: list[Frame] = []
        start = time.monotonic()
        first_at: float | None = None
        n = len(self.sources)
        while len(batch) < self.batch_size:
            got = False
            for k in range(n):
                src = self.sources[(self._next + k) % n]
                frame = src.read(timeout=0)
                if frame is not None:
                    batch.append(frame)
                    got = True
                    if first_at is None:
                        first_at = time.monotonic()
                    if len(batch) >= self.batch_size:
                        break
            self._next = (self._next + 1) % max(n, 1)
            now = time.monotonic()
            if first_at is not None and now - first_at >= self.timeout:
                break
            if first_at is None and (now - start >= idle_timeout or self.done):
                break
            if not got:
                time.sleep(self.poll)
        return batch
