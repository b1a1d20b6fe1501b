"""OS-level names for the server's threads (Linux).

Python 3.11 names a thread only inside Python: ``top -H``, ``/proc/<pid>/task/*/comm``,
``perf`` and ``benchmarks/bench_serving.py``'s CPU-by-thread figures see every thread of a
worker as ``python``. The threads the API starts name themselves at the OS level too.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

PR_SET_NAME = 15  # <linux/prctl.h>
MAX_NAME_BYTES = 15  # the kernel keeps 16 bytes with the terminating NUL


@functools.cache
def _prctl():
    return ctypes.CDLL(None, use_errno=True).prctl


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) as its OS name; a no-op off
    Linux, and never an error: a name is a convenience for whoever watches the process."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _prctl()(PR_SET_NAME, name.encode()[:MAX_NAME_BYTES], 0, 0, 0)
    except (OSError, AttributeError) as exc:
        log.debug("cannot name this thread %r: %s", name, exc)
