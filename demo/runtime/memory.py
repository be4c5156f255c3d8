"""The server's own memory policy, set once at start-up. Knows nothing of Gradio.

glibc's allocator serves a large block (an attention matrix, a batch of logits) from the heap once
its threshold for mapping such blocks on their own has grown past that size, which it does after the
first large blocks are freed; a freed heap block is kept for reuse, and a heap with many threads gets
an arena per thread. A server that analyses many distinct texts then keeps growing long after its
caches are full (measured: RSS 593 -> 1,912 MB over 200 distinct attention requests while the cache
held 640 MB). Fixing the threshold at 1 MB maps every block of 1 MB or more on its own, so it goes
back to the system when freed, and two arenas bound the per-thread heaps. This is what the
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_ARENA_MAX`` environment variables do, set here by the app
itself through ``mallopt`` so that no operator has to know about them.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("gpt_explorer")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENAS = 2


def bound_heap(mmap_threshold: int = MMAP_THRESHOLD_BYTES, arenas: int = ARENAS) -> bool:
    """Apply the policy above; False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: the allocator's defaults stay")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_ARENA_MAX, arenas) == 1
