"""Which rows go into which batch, and a background thread that turns them into tensors.

Training batches come from a seeded shuffle of the whole split, cut into windows of `bucket_size`
batches; each window is sorted by length before it is cut, so a batch holds texts of similar length
(little padding) while the order of batches stays random. The plan is a pure function of
(seed, epoch), which is what makes resuming at any batch exact.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # inference without torch uses the plans and prefetch of this module
    import torch


def epoch_plan(lengths: np.ndarray, batch_size: int, bucket_size: int, seed: int, epoch: int,
               num_batches: int | None = None) -> list[np.ndarray]:
    """Row indices of every batch of one epoch, in training order.

    `num_batches` (default: enough for `batch_size`) is set under torchrun so that every process takes
    the same number of steps; rows are then spread evenly over exactly that many batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * bucket_size
    if bucket_size > 1:
        for start in range(0, len(order), window):
            part = order[start:start + window]
            order[start:start + window] = part[np.argsort(lengths[part], kind="stable")]
    if num_batches is None:
        num_batches = -(-len(order) // batch_size)
    batches = np.array_split(order, num_batches)
    shuffled = rng.permutation(len(batches))
    return [batches[i] for i in shuffled]


def eval_plan(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All rows once, longest first, in batches: evaluation needs no shuffle and little padding."""
    order = np.argsort(-lengths.astype(np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def prefetch(make_batch: Callable, plan: list, depth: int = 4) -> Iterator:
    """Yield make_batch(item) for each plan item, built in a background thread ahead of its use.

    numpy's gathers and the memory-mapped reads release the GIL, so the next batches are ready while
    the current step runs.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for item in plan:
                if stop.is_set():
                    return
                slots.put(make_batch(item))
        except BaseException as e:  # handed to the consumer, which re-raises it in the main thread
            slots.put(e)
            return
        slots.put(done)

    thread = threading.Thread(target=worker, daemon=True, name="lstmcli-batches")
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def to_device(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Move a batch; on CUDA via pinned memory so the copy overlaps computation."""
    if device.type != "cuda":
        return tensors
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
