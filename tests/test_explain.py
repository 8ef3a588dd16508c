"""predict --explain: one leave-one-out score per token, in text order, that deleting really confirms."""

import json
import re

import pytest

from conftest import make_rows, run_cli
from lstmcli.explain import deletion_drops, explain
from lstmcli.predict import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.load(tiny_run, threads=1, precision="fp32")


def test_one_score_per_token_in_text_order(predictor):
    text = "The plot was  superb, really DELIGHTFUL!"
    e = explain(predictor, text)
    encoding = predictor.run.tokenizer.encode(text, add_special_tokens=False)
    assert len(e.tokens) == len(encoding.ids) == 8
    assert [t.token for t in e.tokens] == ["The", "plot", "was", "superb", ",", "really", "DELIGHTFUL", "!"]
    assert all(text[t.start:t.end] == t.token for t in e.tokens)
    assert [t.start for t in e.tokens] == sorted(t.start for t in e.tokens)
    plain = predictor.predict([text])[0]
    assert e.prediction.label == plain.label == "positive"
    assert e.prediction.probability == pytest.approx(plain.probability, abs=1e-5)
    top = max(e.tokens, key=lambda t: t.score)
    assert top.token in ("superb", "DELIGHTFUL")


def test_a_score_is_the_drop_when_that_token_is_left_out(predictor):
    text = "an awful and dull story with a lovely cast"
    e = explain(predictor, text)
    for token in e.tokens:
        without = predictor.predict([text[:token.start] + text[token.end:]])[0]
        drop = e.prediction.probability - without.probabilities[e.prediction.label]
        assert token.score == pytest.approx(drop, abs=1e-5), token
    assert any(t.score < 0 for t in e.tokens) and any(t.score > 0 for t in e.tokens)  # signed


def test_tokens_past_max_length_score_zero_and_empty_texts_work(predictor):
    words = ["great"] + ["film"] * 300
    e = explain(predictor, " ".join(words))
    assert len(e.tokens) == 301
    assert all(t.score == 0 for t in e.tokens[predictor.run.config.max_length:])
    assert e.tokens[0].score != 0
    empty = explain(predictor, "")
    assert empty.tokens == [] and empty.prediction.label == predictor.predict([""])[0].label


def test_deleting_the_top_two_tokens_hurts_far_more_than_two_random_ones(predictor):
    texts = [r["text"] for r in make_rows(120, seed=7)]
    drops = deletion_drops(predictor, texts, k=2, seed=0)
    assert drops["texts"] >= 100
    assert drops["top_drop"] > 0.2
    assert drops["ratio"] >= 2, drops


def test_explain_on_the_command_line(tiny_run):
    texts = ["a wonderful superb film", "the food was awful"]
    result = run_cli("predict", "--model-dir", tiny_run, "--explain", "--json", "--threads", "1", *texts)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative"]
    assert [[t["token"] for t in r["explanation"]] for r in rows] == [t.split() for t in texts]
    assert all(isinstance(t["score"], float) for r in rows for t in r["explanation"])

    plain = run_cli("predict", "--model-dir", tiny_run, "--explain", "--threads", "1", *texts, env={"NO_COLOR": "1"})
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout
    lines = plain.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("positive ") and lines[2].startswith("negative ")
    assert re.search(r"(wonderful|superb)\[\+0\.\d{3}\]", lines[0])  # the strongest words carry their score
    assert "toward positive: " in lines[1] and "toward negative: 'awful'" in lines[3]

    coloured = run_cli("predict", "--model-dir", tiny_run, "--explain", "--threads", "1", texts[0],
                       env={"FORCE_COLOR": "1", "TERM": "xterm-256color", "NO_COLOR": ""})
    assert coloured.returncode == 0 and "\x1b[" in coloured.stdout and "[+0." not in coloured.stdout
