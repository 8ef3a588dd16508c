"""Tokenized splits read back row by row (memory flat in the number of rows), and the seeded epoch plan."""

import random

import numpy as np
import pytest

from conftest import FILLER
from lstmcli import tokenized
from lstmcli.batching import epoch_plan
from lstmcli.tokenizer import encode, train_tokenizer


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(3)
    return [" ".join(rng.choices(FILLER, k=rng.randint(0, 40))) for _ in range(300)]


def test_stored_rows_read_back_exactly_as_encoded(tmp_path, texts):
    tokenizer = train_tokenizer([texts], "wordlevel", 500, 1, True)
    chunks = [(texts[i:i + 70], [i % 3] * len(texts[i:i + 70])) for i in range(0, len(texts), 70)]
    stored = tokenized.build(tmp_path / "split", {}, chunks, tokenizer, 30).encoded
    expected = encode(tokenizer, texts, 30)
    assert len(stored) == len(texts) and stored.truncated == expected.truncated > 0
    edges = [0, 62, 63, 64, 65, 127, 128, 255, 256, 299]  # around the blocks of stored start offsets
    for rows in [np.array(edges), np.arange(300)[::-1], np.random.default_rng(0).permutation(300)[:64]]:
        for got, want in zip(stored.batch(rows), expected.batch(rows)):
            assert np.array_equal(got.numpy(), want.numpy())
    assert [stored.row(i).tolist() for i in edges] == [expected.batch(np.array([i]))[0][0].tolist() for i in edges]


@pytest.mark.parametrize("classes", [3, 300])
def test_class_ids_follow_the_runs_labels_in_the_smallest_dtype_torch_takes(tmp_path, texts, classes):
    tokenizer = train_tokenizer([texts], "wordlevel", 500, 1, True)
    keys = [f"class {i % classes}" for i in range(len(texts))]
    split = tokenized.build(tmp_path / "split", {}, [(texts, keys)], tokenizer, 30)
    lookup = {f"class {c}": classes - 1 - c for c in range(classes)}  # the run's order, not first appearance
    ids = split.class_ids(lookup, "train")
    assert ids.tolist() == [lookup[k] for k in keys]
    assert ids.dtype == (np.uint8 if classes <= 256 else np.int64)


@pytest.mark.parametrize("bucket_size", [1, 4])
def test_the_epoch_plan_is_the_seeded_permutation_it_always_was(bucket_size):
    """Recorded results depend on this plan: the 4-byte shuffle must draw the very order rng.permutation did."""
    lengths = np.random.default_rng(1).integers(1, 50, 1000).astype(np.int32)
    plan = epoch_plan(lengths, 16, bucket_size, seed=7, epoch=2)
    rng = np.random.default_rng([7, 2])
    order = rng.permutation(len(lengths))
    window = 16 * bucket_size
    if bucket_size > 1:
        for start in range(0, len(order), window):
            part = order[start:start + window]
            order[start:start + window] = part[np.argsort(lengths[part], kind="stable")]
    batches = np.array_split(order, -(-len(order) // 16))
    expected = [batches[i] for i in rng.permutation(len(batches))]
    assert [b.tolist() for b in plan] == [b.tolist() for b in expected]
