"""Process-level settings for long gradient passes.

glibc's allocator keeps freed blocks in per-thread arenas (autograd's backward runs on its own
thread) and raises its mmap threshold as large blocks are freed, so after a few micro-batches of
different lengths a process holds about twice the memory it uses: measured on the demo's scoring,
2.2 GB resident between batches for 1.0 GB live (``benchmarks/results/demo_memory.json``).
Serving blocks of at least :data:`MMAP_THRESHOLD` bytes from ``mmap`` returns them to the system
when freed, so the resident peak follows the live peak. Without glibc's mallopt: nothing to do.
"""

from __future__ import annotations

import ctypes
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # 1 MiB: activations and logits of any real batch; small tensors stay on the heap


def return_freed_memory() -> bool:
    """Make large freed blocks go back to the system (glibc only); True when applied.

    Fixing the threshold also stops glibc from raising it dynamically. Called by the command line
    before any work; Python users may call it themselves.
    """
    try:  # the symbols already loaded into this process (libc among them): no library search
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt (macOS): nothing to do
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    logger.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", MMAP_THRESHOLD, ok)
    return ok
