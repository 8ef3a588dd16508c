"""Where and how the arithmetic runs: device, precision, CPU threads, and the process's place under torchrun."""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from functools import cache

import torch

from .cores import choose_threads
from .errors import UserError


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    threads: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def torchrun_env() -> dict[str, int]:
    """This process's place in a torchrun job (all 0/1 when not launched by torchrun)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return dict(rank=int(env.get("RANK", 0)), world_size=world, local_rank=int(env.get("LOCAL_RANK", 0)),
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)))


def setup(device: str, precision: str, threads: int) -> Runtime:
    """Pick device, precision and threads, and set the process-wide CPU options they need."""
    place = torchrun_env()
    chosen_device = choose_device(device, place["local_rank"])
    chosen_threads = choose_threads(threads, place["local_world_size"])
    torch.set_num_threads(chosen_threads)
    with contextlib.suppress(RuntimeError):  # allowed once per process, before any parallel work
        torch.set_num_interop_threads(1)
    # Gradients decaying back through time turn subnormal and slow the CPU to a crawl (a step measured
    # 3.02 s -> 1.15 s here; epoch 2 of an IMDB run 5x slower than epoch 1 without this).
    torch.set_flush_denormal(True)
    return Runtime(chosen_device, choose_precision(precision, chosen_device), chosen_threads, **place)


# glibc's mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> None:
    """Make glibc's malloc keep the memory a step frees for the next step, instead of returning it to the
    system. A training step frees and allocates again buffers of tens of MB (a BiLSTM-128's gates over 64
    texts of 512 tokens: 67 MB a direction); by default glibc maps each such buffer afresh and unmaps it
    on free, so every step pays a page fault per 4 KB touched (about 100,000 a second, a fifth of the time
    spent in the kernel). Kept: the IMDB recipe's model trains 1.3x faster (the recipe with adversarial
    training, 2x), for 1.4x to 2x the peak memory (BENCHMARKS.md). No more arenas than cores, so that a few
    threads do not each keep their own (one arena made the tokenizer's threads queue for it: 2-3x slower).
    Elsewhere than glibc: nothing to do."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    mallopt(M_ARENA_MAX, os.cpu_count() or 1)


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu "
                            "or --device auto.")
        if requested == "cuda":
            requested = f"cuda:{local_rank % torch.cuda.device_count()}"
        return torch.device(requested)
    if requested != "cpu":
        raise UserError(f"--device {requested!r} is not one of: auto, cpu, cuda (or cuda:N).")
    return torch.device("cpu")


def choose_precision(requested: str, device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        if requested == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    if requested == "fp16":
        raise UserError("--precision fp16 needs a CUDA GPU: on CPU use bf16 or fp32.")
    if requested == "bf16" and not cpu_has_bf16():
        # oneDNN's LSTM has no bf16 kernel for such CPUs: torch fails deep inside the first batch.
        raise UserError("--precision bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither: "
                        "use --precision fp32 (or auto).")
    if requested == "bf16" or requested == "auto" and cpu_has_bf16():
        return torch.bfloat16
    return None


@cache
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
