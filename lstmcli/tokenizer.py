"""Text to token ids with the `tokenizers` library: train one from the data, or reuse a tokenizer.json."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .config import TOKENIZER_KINDS
from .errors import UserError

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0  # trained tokenizers put [PAD] first; padding is masked in the model, so any id would do
# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese): each character,
# with its combining marks, is a word of its own. Otherwise a whole clause would be one word, seen once.
UNSPACED_CHARACTER = r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}ー]\p{M}*"
LONG_WORD = 16  # characters; hardly any word of a language written with spaces is this long
SAMPLE_TEXTS = 1000  # training texts checked for long words


def train_tokenizer(text_chunks: Iterable[list[str]], kind: str, vocab_size: int, min_frequency: int,
                    lowercase: bool, warn: Callable[[str], None] | None = None) -> Tokenizer:
    """A new tokenizer learned from the training texts: NFKC (+ lower-case), split on spaces and
    punctuation, and into characters in scripts written without spaces. `warn` hears when most words of
    the texts are too long for a word-level vocabulary."""
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
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(UNSPACED_CHARACTER), "isolated"), pre_tokenizers.BertPreTokenizer()])
    if kind == "wordpiece":
        tokenizer.decoder = decoders.WordPiece()
    sample: list[str] = []
    tokenizer.train_from_iterator(_keeping_first(text_chunks, sample), trainer)
    if tokenizer.get_vocab_size() <= len(special):
        raise UserError("the training texts gave an empty vocabulary: lower --min-frequency or give more data.")
    if kind == "wordlevel" and warn and (share := long_word_share(tokenizer, sample)) > 0.5:
        warn(f"{share:.0%} of the words in the first {len(sample):,} training texts are {LONG_WORD} or more "
             "characters long: a word-level vocabulary learns little from them (text without spaces, codes?). "
             "Try --tokenizer bpe.")
    return tokenizer


def extend_vocabulary(tokenizer: Tokenizer, more: Tokenizer, vocab_size: int) -> Tokenizer:
    """A word-level tokenizer with every word of `tokenizer`, then the most frequent other words of `more`, up
    to `vocab_size`: words of the labelled text first, however rare, then those only unlabelled text has."""
    vocab = tokenizer.get_vocab()
    for word, _ in sorted(more.get_vocab().items(), key=lambda item: item[1]):  # a trained id is a frequency rank
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word, len(vocab))
    extended = Tokenizer.from_str(tokenizer.to_str())
    extended.model = models.WordLevel(vocab, unk_token=UNK)
    return extended


def _keeping_first(chunks: Iterable[list[str]], sample: list[str]) -> Iterator[list[str]]:
    """The chunks, unchanged, while the first SAMPLE_TEXTS texts are copied into `sample`."""
    for chunk in chunks:
        sample.extend(chunk[:SAMPLE_TEXTS - len(sample)])
        yield chunk


def long_word_share(tokenizer: Tokenizer, texts: list[str]) -> float:
    """The share of the texts' words (as the tokenizer splits them, before its vocabulary) of LONG_WORD or
    more characters."""
    words = [word for text in texts
             for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))]
    return sum(len(word) >= LONG_WORD for word in words) / max(1, len(words))


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
    """Texts as one flat array of token ids and a length per text (the layout on disk too)."""
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
        ends = np.cumsum(lengths)
        index = np.arange(ends[-1]) + np.repeat(self.offsets[rows] - (ends - lengths), lengths)
        return padded(self.ids[index], lengths)

    def batch(self, rows: np.ndarray):
        """`padded` as torch tensors (sharing the memory), for training."""
        return as_tensors(*self.padded(rows))


def padded(flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texts given as their token ids one after another, as one matrix padded to the longest, and the lengths."""
    inside = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
    ids = np.full(inside.shape, PAD_ID, dtype=np.int64)
    ids[inside] = flat  # row by row, as `flat` runs
    return ids, lengths


def as_tensors(ids: np.ndarray, lengths: np.ndarray):
    import torch  # here, so that inference without torch can use this module

    return torch.from_numpy(ids), torch.from_numpy(lengths)


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> Encoded:
    """Encode in one batch call; texts are cut to max_length tokens (keeping the head, the tail, or both
    ends: reviews tend to sum up at the end), and an empty one becomes [UNK]."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    unk = [unknown_id(tokenizer)]
    rows = [e.ids for e in encodings]
    truncated = sum(len(r) > max_length for r in rows)
    rows = [truncate(r, max_length, truncation) or unk for r in rows]
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    ids = np.fromiter((i for r in rows for i in r), dtype=token_dtype(tokenizer.get_vocab_size()),
                      count=int(lengths.sum()))
    return Encoded(ids, lengths, truncated)


def truncate(row: list, max_length: int, truncation: str) -> list:
    """The items of `row` a model with `max_length` sees: the first, the last, or the first quarter and
    the last three quarters (head-tail)."""
    if len(row) <= max_length:
        return row
    head = {"head": max_length, "tail": 0, "head-tail": max_length // 4}[truncation]
    return row[:head] + row[len(row) - (max_length - head):]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)
