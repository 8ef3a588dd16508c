"""Self-training (`train --unlabeled`): it learns what the labels alone cannot, resumes exactly, and refuses bad
sources in one line."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import OFFLINE, ROOT, assert_one_line_error, run_cli, write_jsonl
from lstmcli.checkpoint import load_run
from lstmcli.config import Config
from lstmcli.evaluate import evaluate_run
from lstmcli.selftrain import confident_rows
from lstmcli.tokenized import Joined, StoredTokens
from lstmcli.train import train
from test_pretrain import NEGATIVE, POSITIVE, SMALL, task  # noqa: F401  (task is a fixture)


def test_self_training_learns_words_only_the_unlabelled_text_links_to_the_labels(task, tmp_path):  # noqa: F811
    """The labelled reviews use 2 sentiment words per class, the test reviews only the other 6: labels alone
    cannot tell those apart, pseudo-labelled reviews that mix both kinds can."""
    settings = dict(dataset=str(task / "data"), epochs=10, **SMALL)
    alone = train(Config(output_dir=str(tmp_path / "alone"), **settings), quiet=True)
    self_trained = train(Config(output_dir=str(tmp_path / "self"), unlabeled=(str(task / "unlabelled.jsonl"),),
                                self_training_rounds=3, **settings), quiet=True)
    assert self_trained["test"]["accuracy"] >= alone["test"]["accuracy"] + 0.15, (self_trained["test"], alone["test"])
    teacher = evaluate_run(tmp_path / "self" / "rounds" / "0", split="test")  # each round is an ordinary run
    assert teacher["num_examples"] == 200 and teacher["accuracy"] < self_trained["test"]["accuracy"], teacher
    # The teacher reads the words its labelled rows never had as the unknown word, not as random vectors.
    run = load_run(tmp_path / "self" / "rounds" / "0")
    embedding = run.build_model().embedding.weight.detach()
    vocab = run.tokenizer.get_vocab()
    for word in POSITIVE[2:] + NEGATIVE[2:]:
        assert torch.equal(embedding[vocab[word]], embedding[vocab["[UNK]"]]), word
    assert not torch.equal(embedding[vocab[POSITIVE[0]]], embedding[vocab["[UNK]"]])


def test_confident_rows_keep_the_surest_in_the_labelled_proportions():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.99, 0.01], [0.3, 0.7]])
    rows, classes = confident_rows(probabilities, np.array([0, 1, 0, 1]), share=0.5, num_classes=2)
    assert rows.tolist() == [2, 4] and classes.tolist() == [1, 0]  # 1.5 a class: the surest one of each
    rows, classes = confident_rows(probabilities, np.array([0, 0, 0, 1]), share=1.0, num_classes=2)
    assert rows.tolist() == [0, 1, 2, 4] and classes.tolist() == [0, 0, 1, 0]  # 4.5 and 1.5 wanted: 3 exist and 1


def test_joined_reads_each_row_from_its_part(tmp_path):
    parts = []
    for index, texts in enumerate(([[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16]])):
        path = tmp_path / f"tokens-{index}.bin"
        path.write_bytes(np.concatenate(texts).astype(np.uint16).tobytes())
        parts.append(StoredTokens(path, np.dtype(np.uint16), np.array([len(t) for t in texts], np.int32), 0))
    ids, lengths = Joined(parts).padded(np.array([4, 0, 3, 2]))
    assert lengths.tolist() == [4, 3, 2, 2]
    assert ids.tolist() == [[13, 14, 15, 16], [5, 6, 7, 0], [11, 12, 0, 0], [9, 10, 0, 0]]


@pytest.mark.parametrize("killed_in", ["teacher", "student"])
def test_a_killed_self_training_run_resumes_to_the_same_weights(task, tmp_path, killed_in):  # noqa: F811
    from test_resume import wait_for_saved_step

    flags = ["--dataset", task / "data", "--unlabeled", task / "unlabelled.jsonl", "--self-training-rounds", "1",
             "--self-training-epochs", "2", "--embed-dim", "16", "--hidden-size", "16", "--batch-size", "16",
             "--epochs", "30", "--patience", "0", "--threads", "1", "--min-frequency", "1", "--save-every", "20",
             "--quiet"]
    whole = tmp_path / "whole"
    assert run_cli("train", "--output-dir", whole, *flags).returncode == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "lstmcli", "train", "--output-dir", str(out), *map(str, flags)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**__import__("os").environ, **OFFLINE})
    wait_for_saved_step(out / "rounds" / "0" if killed_in == "teacher" else out, 40, process)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = run_cli("train", "--resume", "--output-dir", out, *flags)
    assert resumed.returncode == 0, resumed.stderr
    for run in ("", "rounds/0/"):
        assert (out / run / "model.safetensors").read_bytes() == (whole / run / "model.safetensors").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["test"] == json.loads((whole / "metrics.json").read_text())["test"]


def test_a_new_run_never_reuses_the_rounds_of_the_one_it_replaces(task, tmp_path, cli):  # noqa: F811
    flags = ["--dataset", task / "data", "--unlabeled", task / "unlabelled.jsonl", "--self-training-rounds", "1",
             "--embed-dim", "16", "--hidden-size", "16", "--epochs", "2", "--threads", "1", "--min-frequency", "1",
             "--output-dir", tmp_path / "run", "--quiet"]
    assert cli("train", *flags)[0] == 0
    teacher = (tmp_path / "run" / "rounds" / "0" / "model.safetensors").read_bytes()
    code, _, err = cli("train", *flags, "--overwrite", "--seed", "1")
    assert code == 0, err
    assert (tmp_path / "run" / "rounds" / "0" / "model.safetensors").read_bytes() != teacher


def test_bad_unlabelled_sources_are_one_line(task, tmp_path, cli):  # noqa: F811
    data = task / "data"
    no_text = write_jsonl(tmp_path / "numbers.jsonl", [{"id": i, "stars": 3} for i in range(5)])
    for unlabelled, fragments in ((no_text, ("numbers.jsonl", "no text column")),
                                  (data / "test.jsonl", ("test split",)),
                                  (data, ("--max-train-samples", "every train row is labelled"))):
        out = tmp_path / "run"
        assert_one_line_error(*cli("train", "--dataset", data, "--unlabeled", unlabelled, "--output-dir", out)[::2],
                              *fragments)
        assert not out.exists()  # refused before anything is written


def test_the_vocabulary_keeps_every_labelled_word_before_unlabelled_ones():
    from lstmcli.tokenizer import extend_vocabulary, train_tokenizer

    labelled = train_tokenizer([["a rare gem", "a gem"]], "wordlevel", 10, 1, True)
    unlabelled = train_tokenizer([["the the the film film plot gem"] * 50], "wordlevel", 10, 1, True)
    extended = extend_vocabulary(labelled, unlabelled, 7)
    vocab = extended.get_vocab()
    assert {word: vocab[word] for word in labelled.get_vocab()} == labelled.get_vocab()  # ids unchanged
    assert len(vocab) == 7 and {"the", "film"} <= vocab.keys() and "plot" not in vocab  # most frequent first
    assert extended.encode("the rare film").ids == [vocab["the"], vocab["rare"], vocab["film"]]
