"""The classifier's shapes, and that padding never changes a text's result."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from lstmcli.config import Config
from lstmcli.model import LSTMClassifier
from lstmcli.runtime import cpu_has_bf16


def padded_batch(lengths, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    ids = torch.randint(1, vocab, (len(lengths), int(lengths.max()) + 3), generator=generator)
    ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def model_for(**settings):
    torch.manual_seed(0)
    config = Config(embed_dim=8, hidden_size=6, **settings).validate()
    model = LSTMClassifier(config, vocab_size=50, num_classes=3).eval()
    if config.init_state == "learned":
        with torch.no_grad():
            model.h0.normal_()
            model.c0.normal_()
    return model


SHAPES = [dict(bidirectional=b, layers=n, pooling=p, init_state=i)
          for b in (False, True) for n in (1, 2) for p in ("last", "max", "mean", "mean-max")
          for i in ("zeros", "learned")]


@pytest.mark.parametrize("settings", SHAPES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_padding_does_not_change_logits(settings):
    model = model_for(dropout=0.3, **settings)
    ids, lengths = padded_batch([5, 2, 7, 1, 7])
    with torch.no_grad():
        batched = model(ids, lengths)
        alone = torch.cat([model(ids[i:i + 1, :lengths[i]], lengths[i:i + 1]) for i in range(len(lengths))])
    assert batched.shape == (5, 3)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_last_pooling_equals_packed_lstm_final_state(bidirectional, layers):
    """'last' is h_n of the top layer (h_n[-2] and h_n[-1] when bidirectional), as packed nn.LSTM gives it."""
    model = model_for(bidirectional=bidirectional, layers=layers, pooling="last")
    ids, lengths = padded_batch([6, 3, 1, 4], seed=1)
    with torch.no_grad():
        embedded = model.embedding(ids)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = model.lstm(packed)
        final = torch.cat([h_n[-2], h_n[-1]], dim=1) if bidirectional else h_n[-1]
        torch.testing.assert_close(model(ids, lengths), model.classifier(final), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bidirectional,pooling,features", [
    (False, "max", 6), (True, "max", 12), (True, "last", 12), (True, "mean-max", 24), (False, "mean", 6)])
def test_classifier_input_is_hidden_times_directions(bidirectional, pooling, features):
    model = model_for(bidirectional=bidirectional, pooling=pooling)
    assert model.classifier.in_features == features
    assert model.lstm.bidirectional == bidirectional and model.lstm.batch_first


def test_flags_map_onto_nn_lstm():
    model = LSTMClassifier(Config(embed_dim=12, hidden_size=10, layers=3, dropout=0.25, bias=False,
                                  bidirectional=True), vocab_size=30, num_classes=4)
    lstm = model.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.dropout, lstm.bias) == (12, 10, 3, 0.25, False)
    assert model.embedding.num_embeddings == 30 and model.classifier.out_features == 4


def test_learned_initial_state_is_trained():
    model = model_for(init_state="learned").train()
    ids, lengths = padded_batch([4, 2])
    model(ids, lengths).sum().backward()
    assert model.h0.grad is not None and model.h0.grad.abs().sum() > 0


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 LSTM kernel (--precision bf16 refuses it)")
def test_bf16_autocast_runs_and_stays_close_to_fp32():
    model = model_for(bidirectional=True)
    ids, lengths = padded_batch([5, 3, 7])
    with torch.no_grad():
        full = model(ids, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(ids, lengths).float()
    torch.testing.assert_close(half, full, atol=0.05, rtol=0.05)
