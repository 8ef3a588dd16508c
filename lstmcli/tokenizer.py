"""Text to token ids with the `tokenizers` library: train one from the data, or reuse a tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .config import TOKENIZER_KINDS
from .errors import UserError

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0  # trained tokenizers put [PAD] first; padding is masked in the model, so any id would do


def train_tokenizer(text_chunks: Iterable[list[str]], kind: str, vocab_size: int, min_frequency: int,
                    lowercase: bool) -> Tokenizer:
    """A new tokenizer learned from the training texts: NFKC (+ lower-case), split on punctuation."""
    special = [PAD, UNK]
    if kind == "wordlevel":
        model = models.WordLevel(unk_token=UNK)
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special, show_progress=False)
    elif kind == "bpe":
        model = models.BPE(unk_token=UNK)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special, show_progress=False)
    elif kind == "wordpiece":
        model = models.WordPiece(unk_token=UNK)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special, show_progress=False)
    else:
        raise UserError(f"--tokenizer {kind!r} is not one of {', '.join(TOKENIZER_KINDS)} or a tokenizer.json.")
    tokenizer = Tokenizer(model)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if kind == "wordpiece":
        tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(text_chunks, trainer)
    if tokenizer.get_vocab_size() <= len(special):
        raise UserError("the training texts gave an empty vocabulary: lower --min-frequency or give more data.")
    return tokenizer


def load_tokenizer(spec: str) -> Tokenizer:
    """A tokenizer.json file (or a folder holding one), or a tokenizer on the Hugging Face Hub."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.exists():
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:
            raise UserError(f"{path} is not a valid tokenizer.json ({str(e)[:200]}): point --tokenizer at a "
                            "file saved by the tokenizers library.") from None
    elif path.suffix == ".json" or spec.startswith((".", "/", "~")):
        raise UserError(f"tokenizer file {spec} not found: check the path, or use --tokenizer wordlevel.")
    else:
        try:
            tokenizer = Tokenizer.from_pretrained(spec)
        except Exception as e:
            raise UserError(f"could not load tokenizer {spec!r} from the Hugging Face Hub ({str(e)[:200]}): "
                            "give a local tokenizer.json, or train one with --tokenizer wordlevel.") from None
    # Batching pads and truncates itself; settings baked into a reused file would fight it.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenizer_from_json(text: str, source: str) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:
        raise UserError(f"{source} is not a valid tokenizer ({str(e)[:200]}): retrain the run.") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def unknown_id(tokenizer: Tokenizer) -> int:
    unk = tokenizer.token_to_id(UNK)
    return unk if unk is not None else PAD_ID


@dataclass
class Encoded:
    """Texts as one flat array of token ids and a length per text: the layout in memory and on disk."""
    ids: np.ndarray
    lengths: np.ndarray
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def offsets(self) -> np.ndarray:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return offsets

    def padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `rows` padded to their longest text, and their lengths (int64): one gather, no loop."""
        lengths = self.lengths[rows].astype(np.int64)
        width = int(lengths.max())
        positions = np.arange(width)
        inside = positions[None, :] < lengths[:, None]
        index = np.where(inside, self.offsets[rows][:, None] + positions[None, :], 0)
        ids = np.where(inside, self.ids[index], PAD_ID).astype(np.int64)
        return ids, lengths

    def batch(self, rows: np.ndarray):
        """`padded` as torch tensors (sharing the memory), for training."""
        import torch  # here, so that inference without torch can use this module

        ids, lengths = self.padded(rows)
        return torch.from_numpy(ids), torch.from_numpy(lengths)


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> Encoded:
    """Encode in one batch call; texts are cut to max_length tokens (keeping the head, the tail, or both
    ends: reviews tend to sum up at the end), and an empty one becomes [UNK]."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    unk = [unknown_id(tokenizer)]
    rows = [e.ids for e in encodings]
    truncated = sum(len(r) > max_length for r in rows)
    if truncated and truncation != "head":
        head = max_length // 4 if truncation == "head-tail" else 0
        rows = [r if len(r) <= max_length else r[:head] + r[len(r) - (max_length - head):] for r in rows]
    rows = [r[:max_length] or unk for r in rows]
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    ids = np.fromiter((i for r in rows for i in r), dtype=token_dtype(tokenizer.get_vocab_size()),
                      count=int(lengths.sum()))
    return Encoded(ids, lengths, truncated)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)
