"""keep_freed_memory: a large CPU tensor freed and allocated again reuses its pages."""

import resource
import sys

import pytest
import torch

from sae_lightning.allocator import keep_freed_memory

MB64 = 16 * 1024 * 1024  # float32 entries: a [4096, 4096] tensor


def _faults_of_one_step() -> int:
    """Minor page faults of allocating, filling and freeing a 64 MB tensor."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(MB64).fill_(1.0)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = MB64 * 4 // resource.getpagesize()  # 16,384 pages of 4 KiB
    assert keep_freed_memory() is True
    _faults_of_one_step()  # the first allocation maps the block
    faults = min(_faults_of_one_step() for _ in range(3))
    # glibc's default would unmap on free and fault every page in again (>= `pages`)
    assert faults < pages // 10, (faults, pages)
