"""The process-wide CPU settings that runtime.setup makes for every command."""

import ctypes
import subprocess
import sys

import pytest

# In a child process, so that this one's allocator stays as glibc set it up. Prints the bytes glibc holds in
# separately mapped blocks, and its arena's size, after each of two allocations of a BiLSTM-128 gate buffer
# (64 texts x 512 tokens x 4 gates x 128) freed in between, as a training step frees and takes it again.
TWO_STEPS = """
import ctypes, torch
from lstmcli.runtime import setup
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
setup("cpu", "fp32", 1)
for step in range(2):
    gates = torch.ones(64 * 512 * 4 * 128)
    info = libc.mallinfo2()
    print(info.hblkhd, info.arena)
    del gates
"""


def glibc_has_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError, TypeError):
        return False
    return True


@pytest.mark.skipif(not glibc_has_mallinfo2(), reason="glibc's malloc only")
def test_a_steps_large_buffers_are_kept_for_the_next_step():
    out = subprocess.run([sys.executable, "-c", TWO_STEPS], capture_output=True, text=True, check=True).stdout
    (mapped_first, arena_first), (mapped_second, arena_second) = [map(int, line.split()) for line in out.splitlines()]
    buffer = 64 * 512 * 4 * 128 * 4
    assert mapped_first < buffer and mapped_second < buffer  # in the arena, not mapped on its own
    assert arena_first >= buffer
    assert arena_second == arena_first  # the second step reused the first step's memory
