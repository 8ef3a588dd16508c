"""Training, reusing and running tokenizers."""

import numpy as np
import pytest

from conftest import TINY_SETTINGS, make_rows
from lstmcli.config import Config
from lstmcli.errors import UserError
from lstmcli.tokenizer import PAD_ID, encode, load_tokenizer, train_tokenizer
from lstmcli.train import train

TEXTS = ["Not bad at all!!! Crème brûlée, please.", "GREAT cast, dull film.", "I didn't like it."] * 5


@pytest.mark.parametrize("kind", ["wordlevel", "bpe", "wordpiece"])
def test_trained_tokenizers_have_pad_zero_and_split_punctuation(kind):
    tokenizer = train_tokenizer([TEXTS], kind, vocab_size=200, min_frequency=1, lowercase=True)
    assert tokenizer.token_to_id("[PAD]") == PAD_ID and tokenizer.token_to_id("[UNK]") == 1
    tokens = tokenizer.encode("Not bad at all!!!").tokens
    assert tokens[:4] == ["not", "bad", "at", "all"] and tokens[-3:] == ["!", "!", "!"]


def test_lowercase_can_be_turned_off():
    tokenizer = train_tokenizer([TEXTS], "wordlevel", vocab_size=200, min_frequency=1, lowercase=False)
    assert "GREAT" in tokenizer.get_vocab() and "great" not in tokenizer.get_vocab()


def test_unicode_is_normalised():
    tokenizer = train_tokenizer([["café"]], "wordlevel", vocab_size=50, min_frequency=1, lowercase=True)
    decomposed = "cafe\u0301"  # the same word with a combining accent
    assert tokenizer.encode(decomposed).ids == tokenizer.encode("café").ids


def test_encode_truncates_and_never_returns_an_empty_text():
    tokenizer = train_tokenizer([TEXTS], "wordlevel", vocab_size=200, min_frequency=1, lowercase=True)
    encoded = encode(tokenizer, ["one two three four five six", "", "   "], max_length=3)
    assert list(encoded.lengths) == [3, 1, 1] and encoded.truncated == 1
    ids, lengths = encoded.batch(np.array([0, 1]))
    assert ids.shape == (2, 3) and ids[1, 1:].tolist() == [PAD_ID, PAD_ID]


def test_a_tokenizer_file_is_reused_exactly(tmp_path, tiny_run):
    run_tokenizer = tiny_run / "tokenizer.json"
    rows = tmp_path / "data.jsonl"
    rows.write_text("".join(f'{{"text": "{r["text"]}", "label": {r["label"]}}}\n' for r in make_rows(300)))
    train(Config(dataset=str(rows), output_dir=str(tmp_path / "run"), tokenizer=str(run_tokenizer),
                 **TINY_SETTINGS), quiet=True)
    assert (tmp_path / "run" / "tokenizer.json").read_text() == run_tokenizer.read_text()
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))
