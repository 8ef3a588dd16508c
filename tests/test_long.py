"""Long texts read whole in segments, and adversarial training: what they promise, checked."""

import json
import random

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import FILLER, TINY, TINY_SETTINGS, assert_one_line_error, make_rows, named, write_jsonl
from lstmcli import regularize
from lstmcli.batching import EVAL_TOKENS_PER_TEXT, eval_plan
from lstmcli.config import Config
from lstmcli.model import LSTMClassifier, segments
from lstmcli.runtime import setup
from lstmcli.tokenizer import PAD_ID, encode, train_tokenizer
from lstmcli.train import train
from test_levers import resumed_after_ctrl_c
from test_model import model_for, padded_batch


@pytest.mark.parametrize("segment_length", [1, 3, 4, 7, 50])
def test_segments_hold_every_token_in_order(segment_length):
    lengths = torch.tensor([13, 1, 8, 4, 12])
    ids, lengths = padded_batch(lengths.tolist())
    pieces, piece_lengths = segments(ids[:, :, None].float(), lengths, segment_length)
    assert pieces.shape[1] == min(segment_length, ids.shape[1])
    per_text = pieces.shape[0] // len(lengths)
    for row, length in enumerate(lengths.tolist()):
        own = range(row * per_text, (row + 1) * per_text)
        read = torch.cat([pieces[i, :piece_lengths[i], 0] for i in own])
        assert read.tolist() == ids[row, :length].float().tolist()  # nothing dropped, nothing repeated


def test_every_token_below_max_length_reaches_the_output():
    """Tokenize a text longer than several segments and shorter than --max-length: each of its tokens
    moves the logits (mean pooling, so that every position counts), and padding does not."""
    words = [f"w{i}" for i in range(90)]
    tokenizer = train_tokenizer([[" ".join(words)]], "wordlevel", 200, 1, True)
    encoded = encode(tokenizer, [" ".join(words), "w1 w2"], max_length=100)
    assert encoded.lengths.tolist() == [90, 2] and encoded.truncated == 0
    ids, lengths = encoded.batch(torch.arange(2).numpy())
    torch.manual_seed(0)
    model = LSTMClassifier(Config(embed_dim=8, hidden_size=6, bidirectional=True, segment_length=16,
                                  pooling="mean"), tokenizer.get_vocab_size(), 2).eval()
    model(ids[:1], lengths[:1]).sum().backward()
    touched = model.embedding.weight.grad.abs().sum(dim=1)
    assert (touched[ids[0, :90]] > 0).all()
    assert touched[PAD_ID] == 0


SHAPES = [dict(segment_length=s, bidirectional=b, layers=n, pooling=p, init_state=i)
          for s in (2, 5) for b in (False, True) for n in (1, 2) for p in ("max", "mean", "mean-max")
          for i in ("zeros", "learned")]


@pytest.mark.parametrize("settings", SHAPES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_a_text_gets_the_same_logits_alone_and_in_any_batch(settings):
    model = model_for(dropout=0.3, **settings)
    ids, lengths = padded_batch([5, 2, 11, 1, 7, 10])
    with torch.no_grad():
        batched = model(ids, lengths)
        alone = torch.cat([model(ids[i:i + 1, :lengths[i]], lengths[i:i + 1]) for i in range(len(lengths))])
        reordered = model(ids.flip(0), lengths.flip(0)).flip(0)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(reordered, alone, atol=1e-5, rtol=0)


def test_texts_within_one_segment_read_as_without_segments():
    ids, lengths = padded_batch([5, 2, 7])
    with torch.no_grad():
        torch.testing.assert_close(model_for(bidirectional=True, segment_length=10)(ids, lengths),
                                   model_for(bidirectional=True)(ids, lengths), atol=1e-6, rtol=0)


def test_the_adversarial_loss_is_higher_than_the_clean_one_and_leaves_nothing_behind():
    model = model_for(bidirectional=True, segment_length=3, embedding_dropout=0.0).train()
    adversary = regularize.Adversary(model, epsilon=2.0, runtime=setup("cpu", "fp32", 1))
    ids, lengths = padded_batch([6, 3, 9])
    targets = torch.tensor([0, 1, 2])
    clean = F.cross_entropy(model(ids, lengths), targets)
    clean.backward()
    assert adversary.loss(model, ids, lengths, targets, F.cross_entropy).item() > clean.item()
    assert adversary.push is None and adversary.embedded is None  # nothing carried into the next step
    with torch.no_grad():
        evaluated = model.eval()(ids, lengths)
    assert adversary.embedded is None  # evaluation is never watched
    torch.testing.assert_close(evaluated, model_for(bidirectional=True, segment_length=3)(ids, lengths))


@pytest.mark.parametrize("frozen", [False, True], ids=["trained-embeddings", "frozen-embeddings"])
def test_adversarial_push_is_scaled_to_epsilon(frozen):
    model = model_for(bidirectional=True, embedding_dropout=0.0).train()
    model.embedding.weight.requires_grad_(not frozen)
    adversary = regularize.Adversary(model, epsilon=3.0, runtime=setup("cpu", "fp32", 1))
    seen = []
    model.embedding_dropout.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    ids, lengths = padded_batch([6, 3, 9])
    F.cross_entropy(model(ids, lengths), torch.tensor([0, 1, 2])).backward()
    adversary.loss(model, ids, lengths, torch.tensor([0, 1, 2]), F.cross_entropy)
    clean, pushed = seen
    push = pushed - clean
    torch.testing.assert_close(push.pow(2).sum(dim=(1, 2)).sqrt(), torch.full((3,), 3.0))
    assert push[1, 3:].abs().max() == 0  # the loss does not depend on padding, so neither does the push


@pytest.mark.parametrize("args,message", [
    (["--segment-length", "-1"], "--segment-length -1 is too small"),
    (["--segment-length", "8", "--pooling", "last"], "--pooling last"),
    (["--adversarial", "vat"], "--adversarial"),
    (["--adversarial-epsilon", "-1"], "--adversarial-epsilon -1.0 is too small"),
])
def test_new_flags_are_validated_in_one_line(args, message, tiny_dataset, tmp_path, cli):
    code, _, err = cli("train", *TINY, "--dataset", tiny_dataset, "--output-dir", tmp_path / "out", *args)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def long_rows(count, seed):
    """Texts of up to 60 tokens: filler, with the words that give the class away anywhere in them."""
    rng = random.Random(seed)
    rows = make_rows(count, seed=seed)
    for row in rows:
        words = row["text"].split() + rng.choices(FILLER, k=rng.randint(0, 45))
        rng.shuffle(words)
        row["text"] = " ".join(words)
    return named(rows)


def test_segmented_adversarial_training_learns_and_resumes_exactly(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", long_rows(480, seed=1))
    write_jsonl(data / "validation.jsonl", long_rows(100, seed=2))
    levers = dict(segment_length=8, adversarial="at", adversarial_epsilon=1.0, epochs=3,
                  bidirectional=True)
    whole = train(Config(dataset=str(data), output_dir=str(tmp_path / "whole"), **{**TINY_SETTINGS, **levers}),
                  quiet=True)
    assert whole["validation"]["accuracy"] > 0.85

    config = Config(dataset=str(data), output_dir=str(tmp_path / "cut"), **{**TINY_SETTINGS, **levers})
    resumed = resumed_after_ctrl_c(config, 40, monkeypatch)
    assert resumed["validation"] == whole["validation"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == \
        (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["settings"]["segment_length"] == 8


def test_evaluation_batches_of_long_texts_hold_fewer_texts():
    lengths = np.concatenate([np.full(40, 3000), np.full(300, 20), [100_000]]).astype(np.int32)
    np.random.default_rng(0).shuffle(lengths)
    plan = eval_plan(lengths, 64)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))  # every row once
    for batch in plan:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 64 * EVAL_TOKENS_PER_TEXT
    assert [len(b) for b in plan if lengths[b].max() == 20] == [64] * 4 + [44]  # short texts: as before
