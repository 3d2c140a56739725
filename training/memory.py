"""The process's memory between the phases of a long command: what it peaked at, and handing
back what a finished phase freed.

glibc keeps freed allocations below its mmap threshold (which rises to 32 MB as large blocks
are freed) in the process for reuse, and a training run frees thousands of such blocks (its
``[B, C]`` loss matrices, the structure layers' group blocks). Without a trim, the evaluation
and the decisions that follow start from training's high-water mark rather than from what
they hold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from functools import cache


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes vs KB


def release_freed_memory() -> None:
    """Collect unreachable Python objects and return the C heap's free pages to the system
    (``malloc_trim``; nothing to do outside glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
