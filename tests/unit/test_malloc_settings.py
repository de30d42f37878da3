"""lorefine asks glibc to keep freed memory for reuse (cli.main.keep_freed_memory), unless the user tuned malloc."""

import ctypes.util
import os
import platform

import pytest

from lorefine_mpi.cli import main


@pytest.mark.skipif(platform.system() != "Linux" or ctypes.util.find_library("c") is None, reason="glibc's mallopt")
def test_malloc_keeps_freed_memory_on_glibc(monkeypatch):
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    assert main.keep_freed_memory() is True


def test_a_users_malloc_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert main.keep_freed_memory() is False
