"""Host-memory allocator settings for teachers that run on the CPU.

A teacher forward on the CPU allocates and frees the same large activations every batch. glibc's
malloc adapts its mmap threshold to the largest block freed so far and trims the top of its heap
whenever 2× that much is free, so after a few differently-shaped teachers have run in one process
each forward returns its activations to the kernel and faults them back in, page by page. Measured
on a 2-core machine: one SAM-B 1024² canvas took 10.9-11.9 s after DINOv2-B, CLIP-L and SigLIP
so400m had run in the same process, 8.1-8.2 s with the thresholds below (8.0-8.5 s alone).

Fixing both thresholds stops the adaptation: blocks up to 32 MiB (glibc's ceiling for the mmap
threshold) come from the heap, and up to 2 GiB of free heap top is kept for the next batch.
Larger blocks are still mmapped. On a GPU the activations live in PyTorch's caching allocator,
so this is applied only when a teacher runs on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = (1 << 31) - 1


@functools.lru_cache(maxsize=1)
def keep_heap_for_cpu_teachers() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once). True when applied; False
    where the C library is not glibc (macOS, musl), which then keeps its own policy."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; musl has no mallopt symbol (AttributeError above)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["keep_heap_for_cpu_teachers"]
