"""lorefine asks glibc to keep freed memory for reuse (process_memory.keep_freed_memory), unless the user tuned malloc, and
gives free pages back between the phases of a run (process_memory.release_freed_memory)."""

import ctypes.util
import os
import platform
from pathlib import Path

import numpy as np
import pytest

from lorefine_mpi import process_memory

GLIBC = pytest.mark.skipif(platform.system() != "Linux" or ctypes.util.find_library("c") is None, reason="glibc's mallopt")


def resident_anonymous_mib() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["RssAnon"].split()[0]) / 1024


@GLIBC
def test_malloc_keeps_freed_memory_on_glibc(monkeypatch):
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert process_memory.keep_freed_memory() is True


def test_a_users_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert process_memory.keep_freed_memory() is False


@GLIBC
def test_freed_memory_kept_in_the_heap_is_given_back_at_a_phase_boundary(monkeypatch):
    """With freed memory kept (no mmap, no trimming), a freed 256 MiB array stays resident; `release_freed_memory` gives
    its pages back."""
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert process_memory.keep_freed_memory()
    process_memory.release_freed_memory()  # what earlier tests left free in the heap
    before = resident_anonymous_mib()
    block = np.ones(256 << 17)  # 256 MiB of float64, every page touched
    del block
    kept = resident_anonymous_mib()
    assert process_memory.release_freed_memory()
    released = resident_anonymous_mib()
    assert kept - before > 200 and kept - released > 200
