"""Learning from unlabelled text: the language model, --init-from, --max-train-samples, and their bad input."""

import json
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import OFFLINE, ROOT, assert_one_line_error, run_cli, write_jsonl
from lstmcli.batching import balanced_subset
from lstmcli.checkpoint import read_tensors
from lstmcli.config import Config
from lstmcli.lm import LanguageModel
from lstmcli.pretrain import pretrain
from lstmcli.train import settings_for, train

POSITIVE = "great wonderful excellent lovely superb delightful brilliant enjoyable".split()
NEGATIVE = "awful terrible boring dreadful poor dull horrible disappointing".split()
NOUNS = "film plot cast ending story meal room book".split()
TEMPLATES = ["the {n} was {a} and {b} , {c} even", "a {a} , {b} {n} and {c} too", "i found the {n} {a} , {b} and {c}",
             "what a {a} {n} , so {b} and {c}", "{a} {n} , {b} and {c} cast"]
SMALL = dict(embed_dim=16, hidden_size=32, batch_size=16, threads=1, min_frequency=1, bidirectional=True)


def reviews(count: int, words, seed: int) -> list[dict]:
    """Short reviews from templates; the three sentiment words of a review share its class, so a language model
    that learns which words follow which also learns which words mean the same."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        pool = words((NEGATIVE, POSITIVE)[i % 2])
        a, b, c = (rng.choice(pool) for _ in range(3))
        text = rng.choice(TEMPLATES).format(n=rng.choice(NOUNS), a=a, b=b, c=c)
        rows.append({"text": text, "label": i % 2})
    return rows


def write_scarce_label_task(root):
    """40 labelled reviews that use 2 sentiment words per class, a test split that uses only the other 6, and
    unlabelled reviews that use all 8."""
    seen, unseen, every = (lambda p: p[:2]), (lambda p: p[2:]), (lambda p: p)
    write_jsonl(root / "data" / "train.jsonl", reviews(40, seen, 1))
    write_jsonl(root / "data" / "validation.jsonl", reviews(40, seen, 2))
    write_jsonl(root / "data" / "test.jsonl", reviews(200, unseen, 3))
    write_jsonl(root / "unlabelled.jsonl", [{"text": r["text"]} for r in reviews(3000, every, 4)])
    return root


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_scarce_label_task(tmp_path_factory.mktemp("scarce"))


@pytest.fixture(scope="module")
def language_model(task):
    out = task / "lm"
    final = pretrain(Config(dataset=str(task / "data"), unlabeled=(str(task / "unlabelled.jsonl"),),
                            output_dir=str(out), epochs=6, lr=0.02, **SMALL), quiet=True)
    return out, final


def fine_tune(task, lm_dir, out, **settings):
    config = settings_for({}, dict(dataset=str(task / "data"), init_from=str(lm_dir), output_dir=str(out),
                                   threads=1, batch_size=16, **settings), resume=False)
    return train(config, quiet=True)


def test_the_language_model_learns_context(language_model):
    _, final = language_model
    assert final["validation"]["perplexity"] < 0.3 * final["unigram_perplexity"], final


def test_pretraining_on_unlabelled_text_beats_labels_alone(task, language_model, tmp_path):
    lm_dir, _ = language_model
    alone = train(Config(dataset=str(task / "data"), output_dir=str(tmp_path / "alone"), epochs=10, **SMALL),
                  quiet=True)
    pretrained = fine_tune(task, lm_dir, tmp_path / "pretrained", epochs=10)
    assert pretrained["test"]["accuracy"] >= alone["test"]["accuracy"] + 0.2, (pretrained["test"], alone["test"])


def test_init_from_copies_the_embedding_and_both_directions_exactly(task, language_model, tmp_path):
    lm_dir, _ = language_model
    out = tmp_path / "copy"
    fine_tune(task, lm_dir, out, epochs=1, lr=0.0)  # no learning: the kept weights are the copied ones
    lm = read_tensors(lm_dir / "model.safetensors")
    classifier = read_tensors(out / "model.safetensors")
    copied = [k for k in lm if k.startswith(("embedding.", "lstm."))]
    assert "lstm.weight_hh_l0_reverse" in copied and "embedding.weight" in copied
    for key in copied:
        assert torch.equal(lm[key], classifier[key]), key
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert (settings["hidden_size"], settings["embed_dim"], settings["bidirectional"]) == (32, 16, True)


def test_the_reverse_direction_is_a_language_model_of_the_text_read_backwards():
    model = LanguageModel(Config(embed_dim=8, hidden_size=8, bidirectional=True, embedding_dropout=0.0), 30).eval()
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(model.lstm, name + "_reverse").copy_(getattr(model.lstm, name))
    text = torch.tensor([[5, 9, 3, 17, 4, 11]])
    backwards = text.flip(1)
    # Same weights both ways: a text and its reversal score the same, alone or padded in a batch.
    alone = model(text, torch.tensor([6]))[0]
    batch = torch.tensor([[5, 9, 3, 17, 4, 11, 0, 0], [11, 4, 17, 3, 9, 5, 0, 0], [7, 7, 7, 7, 7, 7, 7, 7]])
    together = model(batch, torch.tensor([6, 6, 8]))[0]
    reversed_alone = model(backwards, torch.tensor([6]))[0]
    assert torch.allclose(alone, reversed_alone, atol=1e-5)
    third = model(batch[2:], torch.tensor([8]))[0]
    assert torch.allclose(together, alone + reversed_alone + third, atol=1e-4)


def test_max_train_samples_takes_a_seeded_balanced_subset():
    classes = np.array([0] * 90 + [1] * 10 + [2] * 50)
    rows = balanced_subset(classes, 60, seed=0)
    assert len(rows) == 60 and len(set(rows)) == 60
    assert sorted(np.bincount(classes[rows]).tolist()) == [10, 25, 25]  # the small class gives all it has
    assert np.array_equal(rows, balanced_subset(classes, 60, seed=0))
    assert not np.array_equal(rows, balanced_subset(classes, 60, seed=1))


def test_max_train_samples_trains_on_that_many_rows(task, tmp_path, cli):
    code, out, err = cli("train", "--dataset", task / "data", "--output-dir", tmp_path / "few", "--max-train-samples",
                         "10", "--batch-size", "5", "--epochs", "1", "--threads", "1", "--min-frequency", "1", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "few" / "metrics.json").read_text())["train"]["steps"] == 2


def start_pretraining(task, out, flags):
    return subprocess.Popen(
        [sys.executable, "-m", "lstmcli", "pretrain", "--dataset", str(task / "unlabelled.jsonl"), "--output-dir",
         str(out), *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**__import__("os").environ, **OFFLINE})


PRETRAIN_FLAGS = ["--embed-dim", "16", "--hidden-size", "16", "--batch-size", "4", "--epochs", "2", "--threads", "1",
                  "--min-frequency", "1", "--save-every", "25", "--bidirectional", "--max-length", "8", "--quiet"]


@pytest.mark.parametrize("objective", ["language-model", "word-vectors"])
def test_pretrain_resumes_byte_exactly_after_kill_9(task, tmp_path, objective):
    from test_resume import wait_for_saved_step

    flags = [*PRETRAIN_FLAGS, "--objective", objective]
    whole = tmp_path / "whole"
    assert run_cli("pretrain", "--dataset", task / "unlabelled.jsonl", "--output-dir", whole, *flags).returncode == 0
    out = tmp_path / "killed"
    process = start_pretraining(task, out, flags)
    wait_for_saved_step(out, 100, process)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = run_cli("pretrain", "--resume", "--dataset", task / "unlabelled.jsonl", "--output-dir", out, *flags)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (out, whole)]
    assert metrics[0]["validation"] == metrics[1]["validation"] and metrics[0]["best"] == metrics[1]["best"]


def test_bad_input_is_one_line(task, language_model, tiny_run, tmp_path, cli):
    lm_dir, _ = language_model
    data = task / "data"
    assert_one_line_error(*cli("train", "--dataset", data, "--init-from", tiny_run, "--output-dir", tmp_path / "a")[::2],
                          "not a language model", "lstmcli pretrain")
    assert_one_line_error(*cli("train", "--dataset", data, "--init-from", tmp_path, "--output-dir", tmp_path / "b")[::2],
                          "not a run directory")
    assert_one_line_error(*cli("train", "--dataset", data, "--init-from", lm_dir, "--hidden-size", "64",
                               "--output-dir", tmp_path / "c")[::2], "--hidden-size", "contradicts")
    assert_one_line_error(*cli("train", "--dataset", data, "--max-train-samples", "1", "--quiet",
                               "--output-dir", tmp_path / "d")[::2], "--max-train-samples", "number of classes")
    no_text = write_jsonl(tmp_path / "numbers.jsonl", [{"id": i, "stars": 3} for i in range(5)])
    assert_one_line_error(*cli("pretrain", "--dataset", data, "--unlabeled", no_text,
                               "--output-dir", tmp_path / "f")[::2], "numbers.jsonl", "no text column")
    assert_one_line_error(*cli("pretrain", "--dataset", data, "--unlabeled", data / "test.jsonl",
                               "--output-dir", tmp_path / "g")[::2], "test split")
    assert_one_line_error(*cli("eval", "--model-dir", lm_dir)[::2], "language model", "--init-from")
    code, _, err = cli("train", "--dataset", data, "--max-train-samples", "1000", "--epochs", "1", "--threads", "1",
                       "--min-frequency", "1", "--output-dir", tmp_path / "h")
    assert code == 0 and "training on all of them" in err
