"""The services bound heap growth from large, short-lived allocations (frames, tensors)."""

import platform

import pytest

from pipelines.service_base import bound_heap_growth


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc mallopt")
def test_mmap_threshold_is_fixed_on_glibc() -> None:
    # mallopt returns 1 on success; the services call this before their main loop.
    assert bound_heap_growth() is True
    assert bound_heap_growth(256 * 1024) is True
