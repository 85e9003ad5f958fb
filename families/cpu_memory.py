"""Batched decoding on the CPU without a page fault per large tensor: glibc's malloc settings.

glibc serves an allocation above its mmap threshold with a fresh mmap, and gives freed memory at the
top of the heap back to the system once it exceeds the trim threshold; both adapt to the sizes freed so
far (from 128 KiB), so how often a process pays for new pages depends on its history. A decoder
allocates and frees the same few-megabyte activations in every layer of every forward: in a fresh
process on the project's machine, one forward of the shipped D2F-LLaDA model over 64 rows x 16 columns
took 24 ms with glibc's defaults (four forwards of 16 rows: 18.6 ms) and 17 ms with the settings below,
and the `d2f` and exact S2D2 decoders at batch 64 over the 64 benchmark prompts ran 10-12% faster
(batch 16: no change). `scripts/bench_decoding.py`, whose warm-up leaves glibc's adaptive thresholds
high, measures no difference. The settings serve allocations up to 32 MiB from the heap and keep up to
128 MiB of freed memory for reuse; larger tensors (weights) keep their own mappings. The process's
resident memory stays nearer its peak in exchange.

Every entry point that decodes on the CPU calls `reuse_freed_memory()` once; setting the environment
variable `S2D2_MALLOC_DEFAULTS=1` leaves glibc's defaults. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

MMAP_THRESHOLD = 32 << 20
"""Allocations up to this size come from the heap (glibc's largest allowed threshold on 64-bit)."""

TRIM_THRESHOLD = 128 << 20
"""Freed memory kept at the top of the heap before any is given back."""

OPT_OUT = "S2D2_MALLOC_DEFAULTS"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_applied: bool | None = None


def reuse_freed_memory() -> bool:
    """Apply the settings once per process (module docstring); True when they are in force."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get(OPT_OUT, "") in ("", "0") and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _applied = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _applied
