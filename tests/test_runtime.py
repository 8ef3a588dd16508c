"""The process-wide CPU settings of lstmcli.runtime."""

import ctypes
import subprocess
import sys

import pytest

# In a child process, so that this one's allocator stays as glibc set it up. Prints the bytes glibc holds in
# separately mapped blocks and its heap's size with a BiLSTM-128 gate buffer (64 texts x 512 tokens x 4 gates x
# 128) allocated, then the heap's size once it is freed, as a training step frees it.
ONE_STEP = """
import ctypes, torch
from lstmcli.runtime import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
keep_freed_memory()
gates = torch.ones(64 * 512 * 4 * 128)
held = libc.mallinfo2()
del gates
print(held.hblkhd, held.arena, libc.mallinfo2().arena)
"""


def glibc_has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError, TypeError):
        return False
    return True


@pytest.mark.skipif(not glibc_has_mallinfo2(), reason="glibc's malloc only")
def test_a_steps_large_buffers_come_from_the_heap_and_stay_there_when_freed():
    out = subprocess.run([sys.executable, "-c", ONE_STEP], capture_output=True, text=True, check=True).stdout
    mapped, heap_holding, heap_after_free = map(int, out.split())
    buffer = 64 * 512 * 4 * 128 * 4
    assert mapped < buffer  # not mapped on its own, to be unmapped on free and faulted in again next step
    assert heap_holding >= buffer
    assert heap_after_free == heap_holding  # not trimmed back to the system: the next step finds it
