"""The classifier: embedding -> (Bi)LSTM -> pooling over the text -> linear.

The LSTM runs on dense padded batches, which were measured 1.3-7x faster per token than packed
sequences on CPU (packing leaves oneDNN's fast path), and padding still never changes a text's result:
the forward direction meets padding only after a text ends and those outputs are masked out of the
pooling, while the backward direction runs over each text reversed within its own length. The weights
live in one ordinary `nn.LSTM`, so every flag maps onto its arguments and the state dict has its names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import Config
from .tokenizer import PAD_ID


class LSTMClassifier(nn.Module):
    def __init__(self, config: Config, vocab_size: int, num_classes: int):
        super().__init__()
        self.pooling = config.pooling
        self.segment_length = config.segment_length
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, num_layers=config.layers, bias=config.bias,
                            batch_first=True, bidirectional=config.bidirectional,
                            dropout=config.dropout if config.layers > 1 else 0.0)
        directions = 2 if config.bidirectional else 1
        if config.init_state == "learned":
            shape = (config.layers * directions, 1, config.hidden_size)
            self.h0 = nn.Parameter(torch.zeros(shape))
            self.c0 = nn.Parameter(torch.zeros(shape))
        else:
            self.h0 = self.c0 = None
        features = config.hidden_size * directions * (2 if config.pooling == "mean-max" else 1)
        self.classifier = nn.Linear(features, num_classes)
        self.quantized_directions: nn.ModuleDict | None = None  # set by quantize()

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes) for token ids (batch, time) right-padded to their lengths (>= 1)."""
        x = self.embedding_dropout(self.embedding(ids))
        run_lengths = lengths
        if self.segment_length:
            x, run_lengths = segments(x, lengths, self.segment_length)
        run_mask = _mask(run_lengths, x.shape[1])
        h0, c0 = self._initial_state(x.shape[0], x)
        if self.lstm.bidirectional or self.quantized_directions is not None:
            directions = self._layer_by_layer(x, run_lengths, run_mask, h0, c0)
        else:
            directions = [self.lstm(x, (h0, c0))[0]]  # one fused call: padding only follows each text
        if self.segment_length:  # back to one row per text: segment k, position j is position k*L+j
            directions = [d.reshape(ids.shape[0], -1, d.shape[2]) for d in directions]
        mask = _mask(lengths, directions[0].shape[1])
        return self.classifier(torch.cat([self._pool(d, lengths, mask) for d in directions], dim=1))

    def _initial_state(self, batch: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        directions = 2 if self.lstm.bidirectional else 1
        if self.h0 is None:
            zeros = x.new_zeros(self.lstm.num_layers * directions, batch, self.lstm.hidden_size)
            return zeros, zeros
        return (self.h0.expand(-1, batch, -1).contiguous().to(x.dtype),
                self.c0.expand(-1, batch, -1).contiguous().to(x.dtype))

    def _layer_by_layer(self, x, lengths, mask, h0, c0) -> list[torch.Tensor]:
        """Outputs of the top layer per direction, each left-aligned within its text: the backward one in
        reading-backwards order, which pooling does not mind (saves re-ordering it, ~10% of a step)."""
        directions = 2 if self.lstm.bidirectional else 1
        if directions == 2:
            steps = torch.arange(x.shape[1], device=x.device)[None, :]
            # Position t of a text read backwards is position length-1-t; padding stays where it is.
            reverse = torch.where(mask, lengths[:, None] - 1 - steps, steps)
        for layer in range(self.lstm.num_layers):
            state = slice(directions * layer, directions * layer + 1)
            outputs = [self._direction(x, layer, "", h0[state], c0[state])]
            if directions == 2:
                state = slice(2 * layer + 1, 2 * layer + 2)
                outputs.append(self._direction(_gather_time(x, reverse), layer, "_reverse", h0[state], c0[state]))
            if layer == self.lstm.num_layers - 1:
                return outputs
            if directions == 2:  # the next layer reads both directions at the same position
                outputs[1] = _gather_time(outputs[1], reverse)
            x = F.dropout(torch.cat(outputs, dim=2), self.lstm.dropout, self.training)

    def _direction(self, x, layer: int, suffix: str, h0, c0) -> torch.Tensor:
        """One direction of one layer of self.lstm, run forward over x with that direction's weights."""
        if self.quantized_directions is not None:
            return self.quantized_directions[f"l{layer}{suffix}"](x, (h0, c0))[0]
        output, _, _ = torch.lstm(x, (h0, c0), self._weights(layer, suffix), self.lstm.bias, 1, 0.0,
                                  self.training, False, True)
        return output

    def _weights(self, layer: int, suffix: str) -> list[torch.Tensor]:
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.lstm.bias else [])
        return [getattr(self.lstm, f"{name}_l{layer}{suffix}") for name in names]

    def _pool(self, outputs: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One direction's outputs (left-aligned in each text) to one vector per text."""
        if self.pooling == "last":
            return outputs[torch.arange(outputs.shape[0], device=outputs.device), lengths - 1]
        pooled = []
        if self.pooling in ("mean", "mean-max"):
            summed = outputs.masked_fill(~mask[:, :, None], 0).sum(dim=1)
            pooled.append(summed / lengths[:, None].to(summed.dtype))
        if self.pooling in ("max", "mean-max"):
            pooled.append(outputs.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1))
        return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]


def quantize(model: LSTMClassifier) -> LSTMClassifier:
    """Dynamic int8 weights for every LSTM direction and the classifier (CPU inference).

    Each layer and direction becomes its own one-layer nn.LSTM before quantization, so the exact
    padding-free algorithm above runs unchanged on the int8 modules.
    """
    import warnings

    lstm = model.lstm
    directions = {}
    for layer in range(lstm.num_layers):
        for suffix in ("", "_reverse") if lstm.bidirectional else ("",):
            single = nn.LSTM(lstm.input_size if layer == 0 else lstm.hidden_size * (2 if lstm.bidirectional else 1),
                             lstm.hidden_size, 1, bias=lstm.bias, batch_first=True)
            with torch.no_grad():
                for mine, theirs in zip(single._flat_weights, model._weights(layer, suffix)):
                    mine.copy_(theirs)
            directions[f"l{layer}{suffix}"] = single
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not yet gone
        warnings.simplefilter("ignore")
        model.quantized_directions = torch.ao.quantization.quantize_dynamic(
            nn.ModuleDict(directions), {nn.LSTM}, dtype=torch.qint8)
        model.classifier = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(model.classifier), {nn.Linear}, dtype=torch.qint8)[0]
    return model.eval()


def segments(x: torch.Tensor, lengths: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts (batch, time, features) cut into consecutive segments of `length` steps, as one wide batch
    (batch * segments, length, features) in text-major order, and each segment's own length (0 for a
    segment wholly in padding). Boundaries fall at multiples of `length` in every text, whatever the
    batch's width, so a text is cut the same alone or in any batch; a batch no wider than `length`
    stays one segment per text, unpadded."""
    width = torch.sym_min(x.shape[1], length)
    count = -(-x.shape[1] // width)
    x = F.pad(x, (0, 0, 0, count * width - x.shape[1]))
    starts = torch.arange(count, device=x.device) * width
    segment_lengths = (lengths[:, None] - starts[None, :]).clamp(0, width)
    return x.reshape(x.shape[0] * count, width, x.shape[2]), segment_lengths.reshape(-1)


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def _gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[i, index[i, t]] for every i, t: whole rows of features picked by index_select, whose backward
    (index_add_) costs a third less than gather's scatter_add_ over every feature."""
    rows = index + torch.arange(x.shape[0], device=x.device)[:, None] * x.shape[1]
    return x.reshape(-1, x.shape[2]).index_select(0, rows.reshape(-1)).view(x.shape)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
