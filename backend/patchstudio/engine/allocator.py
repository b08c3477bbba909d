"""Keep freed memory for reuse instead of giving it back to the system after every pass (glibc).

A sweep allocates the same large activations pass after pass ([rows * positions, d_mlp] floats
are tens of MB on a GPT-2-sized model). With glibc's defaults, blocks that size are mapped fresh
and unmapped on free, or trimmed off the heap, so every pass faults its pages in again and the
kernel zeroes them: on the bench's head sweep 55,000-73,000 page faults per run, 4-10% of its
time. Raising the mmap and trim thresholds keeps that memory in the heap for the next pass. The
values computed are the same; the process keeps its peak memory instead of returning it.

Process-wide, so it is called by the programs (the web app's lifespan, the CLI, the benches), not
by the engine on import; a notebook can call it too. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_done = False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Keep freed blocks up to ``threshold`` bytes in the heap; True if the C library took it."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): keep its defaults
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))
    return _done
