"""Word vectors learned from unlabelled text: skip-gram with negative sampling (word2vec, Mikolov et al. 2013).

`lstmcli pretrain --objective word-vectors` trains them; `lstmcli train --init-from` starts a classifier's
embedding from them. Each word's vector learns to predict the words around it (up to --window words on either
side, a random width per word) against --negatives random words drawn by frequency^0.75; very frequent words
are mostly dropped first (subsampling), so that "the" and "," do not dominate. Only the embedding is learned:
tens of millions of words take minutes on a laptop CPU, where the language model (lm.py) takes hours.

A classifier started from them keeps every word of its own labelled text and adds every word the vectors
know (`vocabulary_with`), so that a test text's words that no label ever showed arrive with a meaning; each
word's row is copied by the word, not by its id, at the scale of a new embedding (`start_from`). Measured with
IMDB's reviews as the text and adversarial training (RESULTS.md, docs/experiments.md; means over seeds 0/1/2,
against the labels-only recipes of the day): Rotten Tomatoes 0.822 against 0.803, SST-2 0.872 against 0.860,
SST-5 0.482 against 0.441, IMDB 0.916 against 0.903, and 1,000 IMDB labels 0.855 with no other flag, against
0.822 from the labels alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint
from .config import Config
from .errors import UserError
from .tokenizer import PAD_ID, extend_vocabulary

TASK = "word-vectors"
SUBSAMPLING = 1e-4  # word2vec's t: a word of frequency f is kept with probability sqrt(t/f) + t/f
NOISE_POWER = 0.75  # negatives are drawn by frequency^0.75: rare words more often than their share
BLOCK = 32  # words scored together against their neighbours
SHARED = 16  # negatives per window of text, in multiples of --negatives


class SkipGram(nn.Module):
    def __init__(self, config: Config, vocab_size: int, token_counts: np.ndarray):
        super().__init__()
        self.window, self.negatives = config.window, config.negatives
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=PAD_ID)  # what a classifier takes
        self.context = nn.Embedding(vocab_size, config.embed_dim)  # each word as a neighbour of others
        with torch.no_grad():  # word2vec's start: small word vectors, zero context vectors
            self.embedding.weight.uniform_(-0.5 / config.embed_dim, 0.5 / config.embed_dim)
            self.embedding.weight[PAD_ID] = 0
            self.context.weight.zero_()
        counts = np.asarray(token_counts, dtype=np.float64).copy()
        counts[PAD_ID] = 0
        ratio = SUBSAMPLING / np.maximum(counts / max(counts.sum(), 1), 1e-12)
        self.register_buffer("keep", torch.tensor(np.minimum(1.0, np.sqrt(ratio) + ratio), dtype=torch.float32),
                             persistent=False)
        noise = np.cumsum(counts ** NOISE_POWER)
        self.register_buffer("noise", torch.tensor(noise / max(noise[-1], 1e-12)), persistent=False)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed negative log-likelihood of every (word, neighbour) pair and of its share of the negatives, and
        how many pairs there were. Validation (eval mode) scores every word with the full window."""
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        mask = positions < lengths[:, None]
        if self.training:  # drop frequent words, closing the gaps: the words around them move closer
            kept = mask & (torch.rand(ids.shape, device=ids.device) < self.keep[ids])
            ids = ids.gather(1, torch.argsort((~kept).to(torch.int8), dim=1, stable=True))
            mask = positions < kept.sum(1, keepdim=True)
            width = torch.randint(1, self.window + 1, ids.shape, device=ids.device)
        else:
            width = torch.full_like(ids, self.window)
        # Each block of BLOCK words is scored against the words from `window` before it to `window` after it in
        # one matrix product; the pairs within each word's width count (slicing the text once per distance was
        # 5x slower: each slice's backward pass writes a whole zero tensor).
        batch, blocks = ids.shape[0], -(-ids.shape[1] // BLOCK)
        end, span = blocks * BLOCK - ids.shape[1], BLOCK + 2 * self.window
        words = F.pad(self.embedding(ids), (0, 0, 0, end)).view(batch, blocks, BLOCK, -1)
        around = F.pad(self.context(ids), (0, 0, self.window, self.window + end)).unfold(1, span, BLOCK)
        distance = (torch.arange(span, device=ids.device)[None, :] - self.window
                    - torch.arange(BLOCK, device=ids.device)[:, None]).abs()
        used = (F.pad(mask, (0, end)).view(batch, blocks, BLOCK, 1)
                & F.pad(mask, (self.window, self.window + end)).unfold(1, span, BLOCK)[:, :, None, :]
                & (distance >= 1) & (distance <= F.pad(width, (0, end)).view(batch, blocks, BLOCK, 1)))
        score = (F.logsigmoid(words @ around) * used).sum()
        pairs = used.sum(-1).view(batch, -1).to(words.dtype)  # the neighbours each word predicts
        # Negatives are shared by the words of a window of text, SHARED times as many at 1/SHARED of the weight:
        # one matrix product instead of a lookup per word.
        draws = torch.rand((batch, SHARED * self.negatives), device=ids.device, dtype=self.noise.dtype)
        noise = self.context(torch.searchsorted(self.noise, draws).clamp_(max=self.noise.shape[0] - 1))
        noise_dots = words.view(batch, blocks * BLOCK, -1) @ noise.transpose(1, 2)
        score = score + (F.logsigmoid(-noise_dots).sum(-1) * pairs).sum() / SHARED
        return -score, int(pairs.sum())


# -- starting a classifier from word vectors -------------------------------------------------------------

def tokenizer_of(directory: str | Path):
    from .tokenizer import tokenizer_from_json

    path = Path(directory) / checkpoint.TOKENIZER
    return tokenizer_from_json(path.read_text(encoding="utf-8"), str(path))


def vocabulary_with(tokenizer, directory: str | Path):
    """`tokenizer` (word-level, trained on the labelled text) with every word the vectors in `directory` know
    added after its own."""
    vectors = tokenizer_of(directory)
    return extend_vocabulary(tokenizer, vectors, tokenizer.get_vocab_size() + vectors.get_vocab_size())


def start_from(embedding: nn.Embedding, vocabulary: dict[str, int], directory: str | Path,
               tensors: dict[str, torch.Tensor]) -> int:
    """Copy the vector of every word of `vocabulary` that the vectors know into `embedding`; return how many."""
    known = tokenizer_of(directory).get_vocab()
    vectors = tensors["embedding.weight"]
    if vectors.shape[1] != embedding.embedding_dim:
        raise UserError(f"--embed-dim {embedding.embedding_dim} contradicts the word vectors in {directory} "
                        f"(--embed-dim {vectors.shape[1]}): drop the flag, or pretrain other vectors.")
    pairs = [(index, known[word]) for word, index in vocabulary.items() if word in known and index != PAD_ID]
    rows, sources = (torch.tensor(column, dtype=torch.long) for column in zip(*pairs)) if pairs else \
        (torch.zeros(0, dtype=torch.long),) * 2
    # At the scale of a new embedding's rows (norm sqrt(dim)), which every recipe's learning rate, dropout and
    # adversarial epsilon were tuned for; skip-gram's own vectors are several times shorter.
    scale = math.sqrt(vectors.shape[1]) / vectors[PAD_ID + 1:].norm(dim=1).mean().clamp_min(1e-12)
    with torch.no_grad():
        embedding.weight[rows] = (vectors[sources] * scale).to(embedding.weight)
    return len(pairs)
