"""Word vectors from unlabelled text: pretrain --objective word-vectors, and a classifier started from them."""

import json
import math

import pytest
import torch

from conftest import assert_one_line_error
from lstmcli.checkpoint import read_tensors
from lstmcli.config import Config
from lstmcli.pretrain import pretrain
from lstmcli.train import settings_for, train
from test_pretrain import NEGATIVE, POSITIVE, SMALL, reviews, write_scarce_label_task

VECTORS = dict(objective="word-vectors", embed_dim=16, batch_size=16, threads=1, min_frequency=1, window=3)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_scarce_label_task(tmp_path_factory.mktemp("scarce-vectors"))


@pytest.fixture(scope="module")
def word_vectors(task):
    out = task / "vectors"
    final = pretrain(Config(dataset=str(task / "unlabelled.jsonl"), output_dir=str(out), epochs=4, lr=0.02,
                            **VECTORS), quiet=True)
    return out, final


def vector_of(directory, word: str) -> torch.Tensor:
    vocabulary = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    return read_tensors(directory / "model.safetensors")["embedding.weight"][vocabulary[word]]


def test_the_held_out_loss_falls_far_below_a_guess(word_vectors):
    _, final = word_vectors
    guess = math.log(2) * (1 + VECTORS.get("negatives", 5))  # every pair scored 0: sigmoid 1/2 for each
    assert final["validation"]["loss"] < 0.75 * guess, final


def test_words_used_alike_get_alike_vectors(word_vectors):
    """A review's three sentiment words share its class: each sentiment word's nearest other sentiment word is one of
    its own class, and a class's words are closer to each other than to the other class's."""
    directory, _ = word_vectors
    words = POSITIVE + NEGATIVE
    vectors = torch.nn.functional.normalize(torch.stack([vector_of(directory, w) for w in words]), dim=1)
    similarity = vectors @ vectors.T
    same_class = torch.tensor([[(i < 8) == (j < 8) for j in range(16)] for i in range(16)])
    nearest = similarity.fill_diagonal_(-2).argmax(1)
    assert same_class[torch.arange(16), nearest].sum() >= 15, [(words[i], words[j]) for i, j in enumerate(nearest)]
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    assert similarity[same_class & off_diagonal].mean() > similarity[~same_class].mean() + 0.1


def start_from(task, vectors_dir, out, **settings):
    config = settings_for({}, dict(dataset=str(task / "data"), init_from=str(vectors_dir), output_dir=str(out),
                                   **{**SMALL, "embed_dim": VECTORS["embed_dim"], **settings}), resume=False)
    return train(config, quiet=True)


def test_word_vectors_teach_the_words_no_label_showed(task, word_vectors, tmp_path):
    """The test reviews use only sentiment words that no labelled review has: labels alone cannot know them, the
    vectors can. Frozen vectors keep the unseen words where the seen ones were."""
    directory, _ = word_vectors
    alone = train(Config(dataset=str(task / "data"), output_dir=str(tmp_path / "alone"), epochs=10,
                         **{**SMALL, "embed_dim": VECTORS["embed_dim"]}), quiet=True)
    # The vectors alone: adversarial training's push of 5 is tuned for texts of 128-wide embeddings, not 16.
    started = start_from(task, directory, tmp_path / "started", epochs=10, freeze_embeddings=True, adversarial="none")
    assert started["test"]["accuracy"] >= alone["test"]["accuracy"] + 0.2, (started["test"], alone["test"])


def test_init_from_copies_every_known_word_by_the_word(task, word_vectors, tmp_path):
    directory, _ = word_vectors
    out = tmp_path / "copy"
    start_from(task, directory, out, epochs=1, lr=0.0)  # no learning: the kept embedding is the copied one
    own = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    known = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    labelled = {w for r in reviews(40, lambda p: p[:2], 1) for w in r["text"].split()}
    assert labelled <= set(own) and set(known) <= set(own)  # the labelled text's words, and every vector's word
    assert any(own[w] != known[w] for w in known)  # ids differ: the rows must be matched by word
    embedding = read_tensors(out / "model.safetensors")["embedding.weight"]
    # Every vector is copied at one scale, that of a new embedding's rows (norm sqrt(embed_dim) on average).
    vectors = read_tensors(directory / "model.safetensors")["embedding.weight"][1:]  # all but padding
    scale = math.sqrt(VECTORS["embed_dim"]) / vectors.norm(dim=1).mean()
    for word in POSITIVE + NEGATIVE + ["film", "the"]:
        assert torch.allclose(embedding[own[word]], vector_of(directory, word) * scale, rtol=1e-5, atol=1e-6), word


def test_word_vectors_bring_adversarial_training_unless_the_user_chose(task, word_vectors, tmp_path):
    directory, _ = word_vectors

    def settings(recipe: dict, **flags):
        return settings_for(recipe, dict(dataset=str(task / "data"), output_dir=str(tmp_path), **flags), resume=False)

    started = settings({}, init_from=str(directory))
    assert (started.adversarial, started.adversarial_epsilon) == ("at", 5.0)
    assert settings({}, init_from=str(directory), adversarial="none").adversarial == "none"
    assert settings({"adversarial": "none"}, init_from=str(directory)).adversarial == "none"
    assert settings({}).adversarial == "none"


def test_bad_input_is_one_line(task, word_vectors, tmp_path, cli):
    directory, _ = word_vectors
    data = task / "data"
    assert_one_line_error(*cli("train", "--dataset", data, "--init-from", directory, "--embed-dim", "32",
                               "--output-dir", tmp_path / "a")[::2], "--embed-dim", "contradicts")
    assert_one_line_error(*cli("train", "--dataset", data, "--init-from", directory, "--tokenizer", "bpe",
                               "--output-dir", tmp_path / "b")[::2], "--tokenizer bpe", "word vectors")
    assert_one_line_error(*cli("pretrain", "--dataset", data, "--objective", "word-vectors", "--window", "0",
                               "--output-dir", tmp_path / "c")[::2], "--window")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_the_blocked_scores_are_the_pairs_counted_one_by_one():
    """forward scores blocks of words against their neighbours in matrix products: the same sum as every (word,
    neighbour) pair within --window of each other in the same text, counted one by one."""
    import numpy as np

    from lstmcli.wordvectors import SkipGram

    torch.manual_seed(0)
    model = SkipGram(Config(objective="word-vectors", embed_dim=8, window=3), 100, np.ones(100)).eval()
    with torch.no_grad():
        model.embedding.weight.normal_()
        model.context.weight.normal_()
        model.context.weight[0] = 0  # every negative is drawn as id 0, whose score is then log(1/2)
    model.noise = torch.ones(100, dtype=torch.float64)
    ids, lengths = torch.randint(1, 100, (3, 45)), torch.tensor([45, 30, 7])  # 45 words: a block and a part
    score, pairs = 0.0, 0
    with torch.no_grad():
        for row, length in enumerate(lengths.tolist()):
            for at in range(length):
                for around in range(max(0, at - 3), min(length, at + 4)):
                    if around != at:
                        dot = model.embedding.weight[ids[row, at]] @ model.context.weight[ids[row, around]]
                        score, pairs = score + float(torch.nn.functional.logsigmoid(dot)), pairs + 1
        loss, counted = model(ids, lengths)
    assert counted == pairs
    assert float(loss) == pytest.approx(-score + math.log(2) * model.negatives * pairs, rel=1e-5)
