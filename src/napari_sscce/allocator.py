"""The C allocator during training: keep freed memory instead of faulting it in again at every step.

glibc's ``malloc`` hands every large freed block (above its dynamic mmap threshold, at most 32 MiB) back to
the operating system and maps it again on the next step: millions of page faults per step, a large share of a
training step spent in the kernel. Inside :func:`keep_freed_memory` the mmap threshold is raised to
:data:`MMAP_THRESHOLD` and the trim threshold to :data:`TRIM_THRESHOLD`, so freed activations are reused;
when the block ends, :func:`release_free_memory` (``malloc_trim(0)``) gives the free pages back, so a
long-running napari process does not keep a training run's peak after it.

Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX), fp32, 2 threads, one training step at the LA patch
(2 + 2 rows of 80 x 112 x 112, 8 filters), ``benchmarks/train_step.py``'s step: supervised 4.31 -> 2.97 s
(1.45x; page faults 2.0 M -> 0.8 M; peak RSS 3.11 -> 3.54 GB), CCE 11.1 -> 6.3 s (1.77x; 7.5 M -> 1.7 M
faults; peak RSS 5.9 -> 7.0 GB). The values computed are unchanged (only where memory comes from changes).

Only on Linux with glibc (elsewhere a no-op); ``NAPARI_SSCCE_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Iterator

#: environment variable: ``0`` keeps glibc's defaults
ENV = "NAPARI_SSCCE_KEEP_FREED_MEMORY"
#: mmap threshold inside :func:`keep_freed_memory` (blocks below it come from the reusable heap)
MMAP_THRESHOLD = 1 << 30
#: trim threshold inside :func:`keep_freed_memory` (free memory at the top of the heap kept up to this)
TRIM_THRESHOLD = (1 << 31) - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_state = {"depth": 0}


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """glibc, or None (another C library or platform)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def available() -> bool:
    """Whether this process can tune its allocator (Linux + glibc, not turned off by :data:`ENV`)."""
    return os.environ.get(ENV, "1") != "0" and _glibc() is not None


def release_free_memory() -> bool:
    """Give free heap pages back to the operating system (``malloc_trim(0)``); False where unavailable."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[str]:
    """Within the block, glibc keeps freed blocks for reuse; at its end the free pages are released.

    Nested blocks are fine (only the outermost releases). Yields one line for the run's summary: what was
    done, or why not. The raised thresholds stay for the process (glibc cannot go back to its dynamic
    threshold), which only means that later large allocations also come from the heap; the release at the
    end is what returns the memory.
    """
    if not available():
        yield "glibc defaults (allocator tuning unavailable or turned off)"
        return
    libc = _glibc()
    assert libc is not None
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    _state["depth"] += 1
    try:
        yield ("glibc keeps freed memory during training (mmap threshold 1 GiB), released at the end"
               if ok else "glibc refused the allocator settings; defaults kept")
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            release_free_memory()
