"""Keep memory a simulation process frees in its heap, for the next client-round to reuse.

Every client-round makes and frees a few buffers the size of the model (the update's
arrays, its protobuf payload, the decoded delta: ~150 KB each for the digits CNN).
glibc's malloc serves blocks past its mmap threshold (128 KiB at first, then the largest
block freed) from fresh ``mmap``s, and hands free memory above its trim threshold (twice
that) at the top of the heap back to the kernel. So these buffers kept arriving as new
pages: ~60 page faults and ~0.2 ms of system time per client-round (digits CNN, one
local step, ``num_workers=0``), ~15% of the runtime's overhead.

:func:`keep_freed_memory` raises both thresholds with ``mallopt``: blocks below
:data:`MMAP_THRESHOLD_BYTES` come from the heap, and up to :data:`TRIM_THRESHOLD_BYTES`
of free memory stays mapped. Memory in use is unchanged; a process keeps at most
``TRIM_THRESHOLD_BYTES`` more resident than it uses (raise it for models of more
than ~100 MB; lower it to return memory sooner).

Written by hand: Python's standard library has no binding for ``mallopt``; this calls
glibc's through :mod:`ctypes`. On other C libraries (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: glibc's ``mallopt`` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks smaller than this come from the heap (glibc caps it at 32 MiB on 64-bit).
MMAP_THRESHOLD_BYTES = 16 << 20
#: Free memory at the top of the heap kept mapped, at most.
TRIM_THRESHOLD_BYTES = 64 << 20


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds (see the module docstring); False where the
    C library has no ``mallopt`` (nothing changed)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
