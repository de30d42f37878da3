"""This process's heap: glibc's malloc asked to keep freed memory for reuse (`keep_freed_memory`, for speed), and to give
the pages of what is free back to the kernel between the phases of a run (`release_freed_memory`, for the peak).

The reconstructions, the post-processing and the local resolution each allocate and free arrays of hundreds of MB at box
256; kept in the heap, the free pages of one phase stay resident while the next phase's arrays, of other sizes, are laid
out beside them, so the peak is more than any phase's own. Released at the phase boundaries, the peak is the largest
phase's (measured: `docs/scale.md`)."""

from __future__ import annotations

import ctypes
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Blocks above 32 MiB (a 256³ grid is 67 MB) are otherwise mapped fresh for each array and unmapped when it is
    freed, and the kernel zeroes every page of the next one again: the gridding iterations of one map allocate
    about 1.4 GB that way, and the page clearing was 30–60 % of `lorefine reconstruct`'s CPU time on these
    machines (sys time; at box 256 a reconstruction still takes 35 s instead of 20 without it). Served from the heap
    instead (no mmap, no trimming, 256 MiB of top padding), freed blocks are reused without faults. Skipped when the
    user set any ``MALLOC_`` variable (glibc reads those itself) or without glibc. Returns whether it was set."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))


def release_freed_memory() -> bool:
    """Give the pages of every free block of the heap back to the kernel (glibc's ``malloc_trim(0)``), at the end of a
    phase: what the next phase allocates is faulted in afresh (a fraction of a second per GB). False without glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    trim(0)
    return True
