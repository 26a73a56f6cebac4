"""Give large freed blocks back to the operating system (glibc on Linux), so that a CPU run's resident memory
follows what it holds rather than what it once held.

glibc's ``malloc`` serves a request of at least ``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and unmaps it on
``free``; but the threshold grows (up to 32 MiB on 64-bit) every time such a block is freed, after which tensors
of that size come from the heap, whose freed pages stay resident and fragment. On a shortened SmolLM2 demo that
kept 1.0 GiB (LoRA) and 0.54 GiB (full fine-tuning) of freed memory resident at the peak, for about 5% less CPU
time (benchmarks/results/smollm2_demo_memory.txt). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``,
which also turns the growth off) is the documented cure; it is what ``MALLOC_MMAP_THRESHOLD_=1048576`` in the
environment does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 20
"""Bytes: a block this large or larger gets its own mapping, unmapped when freed."""


def return_freed_memory(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process. Does nothing (returns False) off glibc,
    or when the user set ``MALLOC_MMAP_THRESHOLD_`` (their choice stands) or ``REFUEL_KEEP_MALLOC=1``."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ \
            or os.environ.get("REFUEL_KEEP_MALLOC") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries: no mallopt, nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
