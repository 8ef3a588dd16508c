"""Tokenized splits on disk: each text is streamed and tokenized once per run, then read by index.

The first pass streams a split through the tokenizer and appends token ids to flat files inside the
run directory; every epoch after that reads batches through memory maps. That gives a seeded shuffle
over the whole split (even a file sorted by label) in constant memory, exact resumption at any batch,
and no tokenization in the training loop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .tokenizer import Encoded, encode, token_dtype

META = "meta.json"


@dataclass
class TokenizedSplit:
    """One split's token ids (flat), lengths, and label slots (indexes into `label_keys`)."""
    encoded: Encoded
    label_slots: np.ndarray
    label_keys: list
    meta: dict

    def __len__(self) -> int:
        return len(self.encoded)

    def class_ids(self, lookup: dict, split_name: str) -> np.ndarray:
        """The class id of every row, given the run's key -> id table."""
        unknown = [k for k in self.label_keys if k not in lookup]
        if unknown:
            raise UserError(f"{split_name} has labels {unknown[:5]} that are not among the run's labels "
                            f"({', '.join(map(str, lookup))}): use data with the same label set.")
        remap = np.array([lookup[k] for k in self.label_keys] or [0], dtype=np.int64)
        return remap[self.label_slots]


def load(directory: Path, key: dict) -> TokenizedSplit | None:
    """The split written earlier under the same key, or None when missing or stale."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    rows, dtype = meta["rows"], np.dtype(meta["dtype"])
    ids = _map(directory / "tokens.bin", dtype, meta["tokens"])
    lengths = _map(directory / "lengths.bin", np.int32, rows)
    slots = _map(directory / "labels.bin", np.int32, rows)
    return TokenizedSplit(Encoded(ids, lengths, meta["truncated"]), slots, meta["label_keys"], meta)


def _map(path: Path, dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def build(directory: Path, key: dict, chunks: Iterable[tuple[list[str], list]], tokenizer,
          max_length: int, truncation: str = "head", on_chunk=None) -> TokenizedSplit:
    """Stream `chunks` of (texts, label keys) through the tokenizer into `directory`, then open it."""
    existing = load(directory, key)
    if existing is not None:
        return existing
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    slots: dict = {}
    rows = tokens = truncated = 0
    dtype = token_dtype(tokenizer.get_vocab_size())
    with open(partial / "tokens.bin", "wb") as ids_file, open(partial / "lengths.bin", "wb") as lengths_file, \
            open(partial / "labels.bin", "wb") as labels_file:
        for texts, keys in chunks:
            encoded = encode(tokenizer, texts, max_length, truncation)
            ids_file.write(encoded.ids.astype(dtype, copy=False).tobytes())
            lengths_file.write(encoded.lengths.tobytes())
            labels_file.write(np.array([slots.setdefault(k, len(slots)) for k in keys],
                                       dtype=np.int32).tobytes())
            rows += len(texts)
            tokens += int(encoded.lengths.sum())
            truncated += encoded.truncated
            if on_chunk:
                on_chunk(len(texts))
    meta = dict(key=key, rows=rows, tokens=tokens, truncated=truncated, dtype=dtype.name,
                label_keys=list(slots))
    (partial / META).write_text(json.dumps(meta))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return load(directory, key)
