"""Pretrained word vectors (GloVe, word2vec or fastText .vec text files) copied into the embedding table."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import UserError


def load_vectors(path: str | Path, vocabulary: dict[str, int], embedding: torch.nn.Embedding) -> int:
    """Copy the vector of every vocabulary token the file covers into `embedding`; return how many.

    The file is streamed line by line (GloVe files run to gigabytes). A token also matches a vector for
    its lower-cased form, for files that keep case when the tokenizer does not.
    """
    path = Path(path).expanduser()
    dim = embedding.embedding_dim
    copied = set()
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # the "count dim" header of word2vec / fastText .vec files
                if len(parts) != dim + 1:
                    if len(parts) > 2 and number <= 2:
                        raise UserError(f"{path} holds {len(parts) - 1}-dimensional vectors but --embed-dim is "
                                        f"{dim}: set --embed-dim {len(parts) - 1}.")
                    continue  # a token with a space in it, as a few GloVe files have
                for token in {parts[0], parts[0].lower()}:
                    index = vocabulary.get(token)
                    if index is not None and index not in copied:
                        try:
                            values = torch.tensor([float(v) for v in parts[1:]])
                        except ValueError:
                            raise UserError(f"{path}, line {number}, is not a word followed by {dim} numbers: "
                                            "give a GloVe / word2vec / fastText text file.") from None
                        with torch.no_grad():
                            embedding.weight[index] = values
                        copied.add(index)
    except FileNotFoundError:
        raise UserError(f"--embeddings file {path} not found: check the path.") from None
    return len(copied)
