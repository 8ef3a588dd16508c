"""Running under torchrun: process group, data sharding, and the few collectives training needs.

Every function is a no-op (or the identity) in a single process, so the training loop reads the same
either way.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError
from .runtime import Runtime

# A rank that dies must not leave the others waiting forever: collectives give up after this long.
TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("LSTMCLI_DIST_TIMEOUT", 1800)))


def start(runtime: Runtime) -> None:
    if runtime.distributed and not dist.is_initialized():
        backend = "nccl" if runtime.device.type == "cuda" else "gloo"
        if runtime.device.type == "cuda":
            torch.cuda.set_device(runtime.device)
        store, rank, world_size = next(dist.rendezvous("env://", timeout=TIMEOUT))
        # A worker restarted by torchrun --max-restarts would otherwise find its dead predecessor's address
        # in the job's store and fail to connect (seen with gloo here): each attempt gets its own keys.
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"lstmcli/attempt-{attempt}/", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=TIMEOUT)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def together(runtime: Runtime, step, *args, **kwargs):
    """Run step(*args, **kwargs) on this rank; if it fails on any rank, every rank stops with an error
    instead of the others waiting at the next collective until the timeout."""
    if not runtime.distributed:
        return step(*args, **kwargs)
    error = None
    try:
        result = step(*args, **kwargs)
    except UserError as e:
        error, result = e, None
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int64, device=_comm_device(runtime))
    dist.all_reduce(failed)
    if error is not None:
        raise error
    if failed.item():
        raise UserError("another process of this torchrun job stopped with an error (printed by that rank): "
                        "fix it and start again.")
    return result


@contextlib.contextmanager
def peers_guard(runtime: Runtime, output_dir):
    """Turn a collective that fails because another process died into one line saying how to go on."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if not runtime.distributed or not (isinstance(e, dist.DistError) or "gloo" in text or "NCCL" in text
                                            or "Connection" in text or "timed out" in text.lower()):
            raise
        raise UserError(f"another process of this torchrun job stopped ({text.splitlines()[0][:160]}): continue "
                        f"from the last saved state with lstmcli train --resume --output-dir {output_dir}, or let "
                        "torchrun --max-restarts with --auto-resume do it.") from None


def shard(stream, runtime: Runtime):
    """This rank's part of a stream: whole shards when they divide evenly, else every world_size-th row."""
    if not runtime.distributed:
        return stream
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(stream, rank=runtime.rank, world_size=runtime.world_size)


def sum_array(values: np.ndarray, runtime: Runtime) -> np.ndarray:
    """Element-wise sum over ranks (counts, confusion matrices, losses)."""
    if not runtime.distributed:
        return values
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64), device=_comm_device(runtime))
    dist.all_reduce(tensor)
    return tensor.cpu().numpy().astype(np.asarray(values).dtype)


def max_int(value: int, runtime: Runtime) -> int:
    if not runtime.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_comm_device(runtime))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def broadcast_text(text: str | None, runtime: Runtime) -> str:
    """Rank 0's text on every rank (sent as bytes: nothing is pickled)."""
    if not runtime.distributed:
        return text
    device = _comm_device(runtime)
    data = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if runtime.is_main else None
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, 0)
    buffer = data.to(device) if data is not None else torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, 0)
    return bytes(buffer.cpu().numpy()).decode()


def gather_texts(text: str, runtime: Runtime) -> list[str]:
    """Every rank's text, in rank order."""
    if not runtime.distributed:
        return [text]
    device = _comm_device(runtime)
    data = torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(runtime.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:len(data)] = data
    parts = [torch.zeros_like(padded) for _ in range(runtime.world_size)]
    dist.all_gather(parts, padded)
    return [bytes(p[:int(s.item())].cpu().numpy()).decode() for p, s in zip(parts, sizes)]


def wrap(model: torch.nn.Module, runtime: Runtime, find_unused_parameters: bool = False) -> torch.nn.Module:
    if not runtime.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def _comm_device(runtime: Runtime) -> torch.device:
    return runtime.device if runtime.device.type == "cuda" else torch.device("cpu")
