"""The process heap: make glibc give freed memory back to the system.

A run allocates and frees tensors of a few hundred kB to a few hundred MB per batch. glibc's malloc serves the
large ones from the heap once its mmap threshold has grown (it doubles, up to 32 MB, whenever such a block is
freed), keeps freed heap memory for reuse and gives several threads arenas of their own, so the resident set
of a long run stays at its high-water mark plus fragmentation. Measured on ``classify`` (``ladder``, 1000 x 41
tilts, box 32, K = 4, defaults, 2 threads; ``benchmarks/CLASSIFY.md``): peak 1.07-1.10 GB with glibc's defaults,
0.67 GB with a fixed mmap threshold and trim threshold of 256 kB and at most 2 arenas, same result (ARI 0.848).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_SETTINGS = {  # parameter: (glibc's environment variable, value)
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 256 * 1024),
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 256 * 1024),
    _M_ARENA_MAX: ("MALLOC_ARENA_MAX", 2),
}


def return_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to 256 kB and its arenas to 2 (each unless the user set the matching
    ``MALLOC_*`` environment variable, which glibc has applied already). Returns whether it applied; a no-op
    (False) off Linux or with a C library without ``mallopt`` (e.g. musl). Call once, early in the process."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for param, (env, value) in _SETTINGS.items():
        if env not in os.environ:
            ok = mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 and ok
    return ok
