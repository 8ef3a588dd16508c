"""The language model that `lstmcli pretrain` trains: the classifier's embedding and (Bi)LSTM, predicting words.

The weights have the classifier's names and shapes (`embedding.weight`, `lstm.weight_ih_l0`, ...), so a
classifier starts from them as they are. A bidirectional model is two language models in one `nn.LSTM`: its
forward direction predicts each next word, its `_reverse` direction each previous word (reading the text
backwards within its own length). Each direction of an upper layer reads only its own direction below
(the half of `weight_ih` that faces it): otherwise the forward model would see the words it must predict.
The other half stays zero, so a classifier starts exactly from the two pretrained models and learns to mix
them.

Words are scored by an adaptive softmax (Grave et al. 2017): frequent words in a small head, rare ones in
smaller clusters, so a 20-50k vocabulary costs a fraction of a full softmax on a CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint, wordvectors
from .config import Config, option_name
from .errors import UserError
from .tokenizer import PAD_ID

TASK = "language-model"
HEAD_CUTOFFS = (2000, 10000)  # the adaptive softmax's head and first tail cluster (by frequency rank)
ARCHITECTURE = ("embed_dim", "hidden_size", "layers", "bidirectional", "bias")  # what a classifier inherits


class LanguageModel(nn.Module):
    def __init__(self, config: Config, vocab_size: int, token_counts: np.ndarray | None = None):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, num_layers=config.layers, bias=config.bias,
                            batch_first=True, bidirectional=config.bidirectional)
        self.between_layers = config.dropout
        if config.bidirectional:
            with torch.no_grad():
                for layer in range(1, config.layers):
                    self._input_weights(layer, "", facing=False).zero_()
                    self._input_weights(layer, "_reverse", facing=False).zero_()
        # The adaptive softmax wants classes ordered by frequency: `rank` maps a token id to its rank.
        counts = np.ones(vocab_size) if token_counts is None else token_counts
        order = np.argsort(-np.asarray(counts, dtype=np.float64), kind="stable")
        rank = np.empty(vocab_size, dtype=np.int64)
        rank[order] = np.arange(vocab_size)
        self.register_buffer("rank", torch.from_numpy(rank))
        cutoffs = [c for c in HEAD_CUTOFFS if c < vocab_size - 1] or [max(1, vocab_size // 2)]
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(config.hidden_size, vocab_size, cutoffs, div_value=4.0)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed negative log-likelihood of every predicted word (both directions), and how many there were."""
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        x = self.embedding_dropout(self.embedding(ids))
        texts = [(x, ids, "")]
        if self.lstm.bidirectional:
            steps = torch.arange(ids.shape[1], device=ids.device)[None, :]
            reverse = torch.where(mask, lengths[:, None] - 1 - steps, steps)  # each text backwards, in place
            texts.append((x.gather(1, reverse[:, :, None].expand(-1, -1, x.shape[2])), ids.gather(1, reverse),
                          "_reverse"))
        predicts = mask[:, 1:]  # position t predicts t + 1 of the text (read forwards or backwards)
        hidden, targets = [], []
        for inputs, words, suffix in texts:
            hidden.append(self._stack(inputs, suffix)[:, :-1][predicts])
            targets.append(words[:, 1:][predicts])
        hidden, targets = torch.cat(hidden), torch.cat(targets)
        with torch.autocast(ids.device.type, enabled=False):  # the adaptive softmax mixes dtypes under autocast
            log_probabilities = self.softmax(hidden.float(), self.rank[targets]).output
        return -log_probabilities.sum(), len(targets)  # a sum, not a mean: a batch of one-word windows has none

    def _stack(self, x: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction's layers, each reading only the same direction's output below."""
        zeros = x.new_zeros(1, x.shape[0], self.lstm.hidden_size)
        for layer in range(self.lstm.num_layers):
            if layer:
                x = F.dropout(x, self.between_layers, self.training)
            weights = [self._input_weights(layer, suffix, facing=True), getattr(self.lstm, f"weight_hh_l{layer}{suffix}")]
            if self.lstm.bias:
                weights += [getattr(self.lstm, f"bias_ih_l{layer}{suffix}"), getattr(self.lstm, f"bias_hh_l{layer}{suffix}")]
            x, _, _ = torch.lstm(x, (zeros, zeros), weights, self.lstm.bias, 1, 0.0, self.training, False, True)
        return x

    def _input_weights(self, layer: int, suffix: str, *, facing: bool) -> torch.Tensor:
        """The input weights of one direction of one layer; above the first layer of a BiLSTM, the half
        that reads the same direction (facing) or the other one."""
        weight = getattr(self.lstm, f"weight_ih_l{layer}{suffix}")
        if layer == 0 or not self.lstm.bidirectional:
            return weight
        own = slice(0, self.lstm.hidden_size) if suffix == "" else slice(self.lstm.hidden_size, None)
        other = slice(self.lstm.hidden_size, None) if suffix == "" else slice(0, self.lstm.hidden_size)
        return weight[:, own if facing else other]


# -- starting a classifier from a language model ------------------------------------------------------------

def inherit(config: Config, given: dict) -> Config:
    """`config` with what the pretrained run that --init-from names decides: a language model's architecture and
    tokenizer, word vectors' embedding size. A flag the user gave (`given`) that contradicts it is an error
    naming the flag."""
    directory = Path(config.init_from)
    record = read_record(directory)
    settings = record["settings"]
    vectors = record["task"] == wordvectors.TASK
    inherited = ("embed_dim",) if vectors else ARCHITECTURE
    for name in inherited:
        if name in given and given[name] != settings[name]:
            raise UserError(f"{option_name(name)} {given[name]!r} contradicts the {record['task']} run in {directory} "
                            f"({option_name(name)} {settings[name]!r}): drop the flag, or pretrain another model.")
    if vectors and config.tokenizer != "wordlevel":
        raise UserError(f"--tokenizer {config.tokenizer} cannot take the word vectors of {directory}, which are "
                        "whole words: drop --tokenizer.")
    if not vectors and "tokenizer" in given:
        raise UserError(f"--tokenizer cannot change with --init-from: the model's embeddings belong to the "
                        f"tokenizer of {directory}; drop --tokenizer.")
    tokenizer = {} if vectors else dict(tokenizer=str(directory / checkpoint.TOKENIZER))
    # Word vectors fine-tuned better with adversarial training on every set measured (docs/experiments.md), so
    # they bring it unless the user chose.
    adversarial = dict(adversarial="at") if vectors and "adversarial" not in given else {}
    return replace(config, **tokenizer, **adversarial, **{name: settings[name] for name in inherited})


def read_record(directory: Path) -> dict:
    record = checkpoint.read_json(directory / checkpoint.CONFIG, f"--init-from {directory} is not a run directory: "
                                                                 "pass the --output-dir of lstmcli pretrain.")
    if record.get("format") != checkpoint.FORMAT or record.get("task") not in (TASK, wordvectors.TASK):
        raise UserError(f"--init-from {directory} is not a language model or word vectors (it is a "
                        f"{record.get('task', 'classifier') if record.get('format') == checkpoint.FORMAT else 'foreign'} "
                        "run): pass a run directory written by lstmcli pretrain.")
    return record


def start_from(model: nn.Module, directory: str | Path, vocabulary: dict[str, int]) -> str:
    """Copy what the pretrained run in `directory` learned into `model` (a classifier built with the settings
    `inherit` gave): a language model's embedding and LSTM, or the vector of each word of `vocabulary` that the
    word vectors know. Returns what was copied, for the run's log."""
    directory = Path(directory)
    record = read_record(directory)
    tensors = checkpoint.read_tensors(directory / checkpoint.WEIGHTS, record["weights"].get(checkpoint.WEIGHTS))
    if record["task"] == wordvectors.TASK:
        copied = wordvectors.start_from(model.embedding, vocabulary, directory, tensors)
        return f"{copied:,} of {len(vocabulary):,} tokens start from the word vectors in {directory}"
    tensors = {k: v for k, v in tensors.items() if k.startswith(("embedding.", "lstm."))}
    expected = {k: v for k, v in model.state_dict().items() if k in tensors or k.startswith(("embedding.", "lstm."))}
    checkpoint.check_state_dict(tensors, expected, directory / checkpoint.WEIGHTS)
    model.load_state_dict(tensors, strict=False)
    return f"embedding and LSTM weights from the language model in {directory}"
