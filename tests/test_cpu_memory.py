"""glibc's malloc settings for CPU decoding (families/cpu_memory.py): after `reuse_freed_memory()` a
4 MiB tensor comes from the heap rather than a fresh mapping, and the opt-out variable keeps glibc's
defaults. Each case runs in a fresh interpreter, since the settings last for the process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from families import REPO_ROOT, cpu_memory

PROBE = """
import ctypes, sys
import torch
from families.cpu_memory import reuse_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
applied = reuse_freed_memory()
before = libc.mallinfo2().hblkhd
tensor = torch.empty(1 << 20)  # 4 MiB of float32
print(applied, libc.mallinfo2().hblkhd - before)
"""


def _probe(**env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}).stdout.split()
    return out[0], int(out[1])


def _glibc() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" and version else ()


@pytest.mark.skipif(_glibc() < (2, 33), reason="mallinfo2 needs glibc >= 2.33")
def test_large_tensors_come_from_the_heap_unless_opted_out():
    assert _probe(**{cpu_memory.OPT_OUT: "0"}) == ("True", 0)  # no new mapping for the tensor
    applied, mapped = _probe(**{cpu_memory.OPT_OUT: "1"})
    assert applied == "False" and mapped >= 1 << 22  # glibc's default: the tensor is a fresh mapping


def test_settings_are_applied_once():
    first = cpu_memory.reuse_freed_memory()
    assert cpu_memory.reuse_freed_memory() is first
