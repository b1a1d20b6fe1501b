"""Where the buffers of table-sized frames come from: glibc's ``mmap`` threshold.

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap``
and gives it back to the OS on ``free``; smaller ones come from the heap, which keeps what
is freed for later use. The threshold starts at 128 KiB and, when an mmapped block above
it is freed, rises to that block's size (up to 32 MiB), so once a process has loaded and
freed a few frames, the next frames' column buffers land on the heap and stay there:
validation at 100,000 rows reached 389 MB of RSS for ~125 MB of frames. Nodes tagged
:data:`RETURN_MEMORY` (see ``hooks.py``) load and run with the threshold held at 128 KiB,
so their frames' buffers go back to the OS when freed (389 -> 323 MB); afterwards it is
held at 32 MiB, where the dynamic threshold settles anyway, so the rest of the process
(training's tensors) keeps the heap's speed.

Elsewhere than glibc (macOS, musl) these calls do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

RETURN_MEMORY = "return_memory"  # node tag
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
SMALL_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value
LARGE_MMAP_THRESHOLD = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# The API: a decoded upload's pixel blocks (Pillow allocates 16 MiB blocks) are mmapped
# and returned on free; the per-request buffers under 1 MiB keep the heap's speed.
SERVING_MMAP_THRESHOLD = 1024 * 1024


@functools.cache
def _mallopt():
    if platform.libc_ver()[0] != "glibc":
        return None
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    return getattr(libc, "mallopt", None)


@functools.cache
def _malloc_trim():
    if platform.libc_ver()[0] != "glibc":
        return None
    path = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(path), "malloc_trim", None) if path else None


def trim() -> bool:
    """Hand the heap's free pages back to the OS now (glibc ``malloc_trim(0)``): after a
    burst of large decodes, what the arenas kept for reuse; False elsewhere."""
    fn = _malloc_trim()
    return bool(fn and fn(0))


def set_mmap_threshold(nbytes: int) -> bool:
    """Hold glibc's mmap threshold at ``nbytes`` (its dynamic rise stops); False where the
    C library is not glibc or refuses the value."""
    mallopt = _mallopt()
    return bool(mallopt and mallopt(M_MMAP_THRESHOLD, int(nbytes)) == 1)
