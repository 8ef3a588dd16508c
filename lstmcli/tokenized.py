"""Tokenized splits on disk: each text is streamed and tokenized once per run, then read by index.

The first pass streams a split through the tokenizer and appends token ids to flat files inside the
run directory; every epoch after that reads each batch's rows from them. That gives a seeded shuffle
over the whole split (even a file sorted by label), exact resumption at any batch, and no tokenization
in the training loop. Memory stays nearly flat in the number of rows: token ids are read with pread
(never mapped, so they do not count in the process's memory), a start offset is kept per block of
rows rather than per row, and class ids take one byte a row.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .tokenizer import as_tensors, encode, padded, token_dtype

META = "meta.json"
BLOCK = 64  # rows per stored start offset
CHUNK_ROWS = 1 << 20  # label slots converted to class ids this many at a time


class StoredTokens:
    """A split's token ids in tokens.bin, read row by row; lengths memory-mapped."""

    def __init__(self, path: Path, dtype: np.dtype, lengths: np.ndarray, truncated: int):
        self.dtype, self.lengths, self.truncated = dtype, lengths, truncated
        self._path, self._window_starts = path, None
        self._file = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._file)
        # Where each block of BLOCK rows starts; a row's start adds the lengths before it in its block.
        sums = np.add.reduceat(lengths, np.arange(0, len(lengths), BLOCK), dtype=np.int64) if len(lengths) else []
        self._block_starts = np.concatenate([[0], np.cumsum(sums)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def windows(self, size: int) -> StoredTokens:
        """The same tokens as rows of at most `size` tokens, a longer text becoming consecutive windows (what a
        language model trains on); reads the same file, with one start position per window."""
        lengths = self.lengths.astype(np.int64)
        pieces = np.maximum(1, -(-lengths // size))
        text = np.repeat(np.arange(len(lengths)), pieces)
        piece = np.arange(len(text)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        view = copy.copy(self)
        view.lengths = np.minimum(size, lengths[text] - piece * size).astype(np.int32)
        view._window_starts = self.starts(text) + piece * size
        return view

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each token id occurs in the split."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        with open(self._path, "rb") as tokens:
            while len(chunk := np.fromfile(tokens, self.dtype, 1 << 22)):
                counts += np.bincount(chunk, minlength=vocab_size)
        return counts

    def starts(self, rows: np.ndarray) -> np.ndarray:
        """The position in tokens.bin of each row's first token."""
        if self._window_starts is not None:
            return self._window_starts[rows]
        rows = np.asarray(rows, dtype=np.int64)
        first = rows - rows % BLOCK
        before = first[:, None] + np.arange(BLOCK)[None, :]
        inside = before < rows[:, None]
        lengths = self.lengths[np.where(inside, before, 0)]
        return self._block_starts[rows // BLOCK] + np.where(inside, lengths, 0).sum(axis=1)

    def row(self, index: int) -> np.ndarray:
        return self._read([int(self.starts(np.array([index]))[0])], [int(self.lengths[index])])

    def padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `rows` padded to their longest text, and their lengths."""
        lengths = self.lengths[rows].astype(np.int64)
        return padded(self._read(self.starts(rows).tolist(), lengths.tolist()), lengths)

    def batch(self, rows: np.ndarray):
        """`padded` as torch tensors, for training."""
        return as_tensors(*self.padded(rows))

    def _read(self, starts: list[int], lengths: list[int]) -> np.ndarray:
        size = self.dtype.itemsize
        data = b"".join(os.pread(self._file, n * size, start * size) for start, n in zip(starts, lengths))
        return np.frombuffer(data, dtype=self.dtype)


class Joined:
    """Several StoredTokens read as one: row i of the second part is row len(first) + i, and so on."""

    def __init__(self, parts: list[StoredTokens]):
        self.parts = parts
        self.lengths = np.concatenate([part.lengths for part in parts])
        self._firsts = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, dtype=np.int64)
        part_of = np.searchsorted(self._firsts, rows, side="right") - 1
        texts = [np.empty(0)] * len(rows)
        for index, part in enumerate(self.parts):
            where = np.flatnonzero(part_of == index)
            if len(where):
                local = rows[where] - self._firsts[index]
                flat = part._read(part.starts(local).tolist(), part.lengths[local].tolist())
                for position, text in zip(where, np.split(flat, np.cumsum(part.lengths[local])[:-1])):
                    texts[position] = text
        return padded(np.concatenate(texts), self.lengths[rows].astype(np.int64))

    def batch(self, rows: np.ndarray):
        return as_tensors(*self.padded(rows))


@dataclass
class TokenizedSplit:
    """One split's token ids and lengths, and a label slot (an index into `label_keys`) per row."""
    encoded: StoredTokens
    directory: Path
    label_keys: list
    meta: dict

    def __len__(self) -> int:
        return len(self.encoded)

    def class_ids(self, lookup: dict, split_name: str) -> np.ndarray:
        """The class id of every row, given the run's key -> id table: one byte each up to 256 classes
        (what torch's cross-entropy takes besides int64)."""
        unknown = [k for k in self.label_keys if k not in lookup]
        if unknown:
            raise UserError(f"{split_name} has labels {unknown[:5]} that are not among the run's labels "
                            f"({', '.join(map(str, lookup))}): use data with the same label set.")
        dtype = np.uint8 if len(set(lookup.values())) <= 256 else np.int64
        remap = np.array([lookup[k] for k in self.label_keys] or [0], dtype=dtype)
        classes = np.empty(len(self), dtype=dtype)
        with open(self.directory / "labels.bin", "rb") as slots:  # read, not mapped: no page stays resident
            for start in range(0, len(self), CHUNK_ROWS):
                classes[start:start + CHUNK_ROWS] = remap[np.fromfile(slots, np.int32, CHUNK_ROWS)]
        return classes


def load(directory: Path, key: dict) -> TokenizedSplit | None:
    """The split written earlier under the same key, or None when missing or stale."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    lengths = _map(directory / "lengths.bin", np.int32, meta["rows"])
    tokens = StoredTokens(directory / "tokens.bin", np.dtype(meta["dtype"]), lengths, meta["truncated"])
    return TokenizedSplit(tokens, directory, meta["label_keys"], meta)


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
