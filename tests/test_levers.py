"""The model and training levers recipes use: vectors, truncation, EMA, schedules."""

import json
import os
import signal

import pytest
import torch

from conftest import TINY_SETTINGS, make_rows, named, write_jsonl
from lstmcli import loop as loop_module
from lstmcli.checkpoint import load_run
from lstmcli.config import Config
from lstmcli.errors import Interrupted, UserError
from lstmcli.tokenizer import encode, train_tokenizer
from lstmcli.loop import learning_rate
from lstmcli.train import train
from lstmcli.vectors import load_vectors


def settings(tmp_path, dataset, **extra):
    return Config(dataset=str(dataset), output_dir=str(tmp_path / "run"), **{**TINY_SETTINGS, **extra})


def write_vectors(path, vectors: dict, header=True):
    dim = len(next(iter(vectors.values())))
    lines = [f"{len(vectors)} {dim}"] if header else []
    lines += [" ".join([word, *map(str, values)]) for word, values in vectors.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_vectors_are_copied_for_covered_tokens_only(tmp_path, header):
    tokenizer = train_tokenizer([["great film", "awful film"]], "wordlevel", 50, 1, True)
    vocabulary = tokenizer.get_vocab()
    embedding = torch.nn.Embedding(len(vocabulary), 4)
    before = embedding.weight.detach().clone()
    path = write_vectors(tmp_path / "vectors.vec", {"GREAT": [1, 2, 3, 4], "film": [0.5, 0.5, 0.5, 0.5],
                                                    "unseen": [9, 9, 9, 9]}, header)
    assert load_vectors(path, vocabulary, embedding) == 2
    assert embedding.weight[vocabulary["great"]].tolist() == [1, 2, 3, 4]  # matched through lower-casing
    assert embedding.weight[vocabulary["film"]].tolist() == [0.5] * 4
    assert torch.equal(embedding.weight[vocabulary["awful"]], before[vocabulary["awful"]])


def test_vectors_of_the_wrong_size_are_explained(tmp_path):
    embedding = torch.nn.Embedding(5, 3)
    path = write_vectors(tmp_path / "glove.txt", {"a": [1, 2, 3, 4]}, header=False)
    with pytest.raises(UserError, match="4-dimensional vectors but --embed-dim is 3"):
        load_vectors(path, {"a": 1}, embedding)


def test_frozen_embeddings_keep_their_vectors_through_training(tmp_path, tiny_dataset):
    words = ["great", "awful", "film", "wonderful"]
    path = write_vectors(tmp_path / "vectors.txt", {w: [float(i)] * 16 for i, w in enumerate(words)}, header=False)
    train(settings(tmp_path, tiny_dataset, embeddings=str(path), freeze_embeddings=True), quiet=True)
    run = load_run(tmp_path / "run")
    weights = run.build_model().embedding.weight
    vocabulary = run.tokenizer.get_vocab()
    for i, word in enumerate(words):
        assert weights[vocabulary[word]].tolist() == [float(i)] * 16


def test_truncation_keeps_the_chosen_end():
    tokenizer = train_tokenizer([[" ".join(f"w{i}" for i in range(20))]], "wordlevel", 50, 1, True)
    text = " ".join(f"w{i}" for i in range(20))
    ids = {mode: encode(tokenizer, [text], 8, mode).ids.tolist() for mode in ("head", "tail", "head-tail")}
    word = {i: t for t, i in tokenizer.get_vocab().items()}
    assert [word[i] for i in ids["head"]] == [f"w{i}" for i in range(8)]
    assert [word[i] for i in ids["tail"]] == [f"w{i}" for i in range(12, 20)]
    assert [word[i] for i in ids["head-tail"]] == ["w0", "w1"] + [f"w{i}" for i in range(14, 20)]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_warm_up_then_decay(schedule):
    config = Config(lr=1.0, schedule=schedule)
    rates = [learning_rate(step, 100, 10, config) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert (rates[-1] < 0.05) == (schedule != "constant")
    assert all(a >= b - 1e-12 for a, b in zip(rates[10:], rates[11:]))


def resumed_after_ctrl_c(config: Config, step: int, monkeypatch) -> dict:
    """Train `config` until a real Ctrl-C at `step` (handled by training's signal handler), then resume it;
    returns the resumed run's metrics."""
    real_save_due = loop_module.save_due

    def interrupt_at_step(settings, at, last_save):
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save_due(settings, at, last_save)

    monkeypatch.setattr(loop_module, "save_due", interrupt_at_step)
    with pytest.raises(Interrupted, match=f"SIGINT at step {step}"):
        train(config, quiet=True)
    monkeypatch.undo()
    return train(config, resume=True, quiet=True)


def test_interrupt_and_resume_is_exact_with_ema_and_a_schedule(tmp_path, monkeypatch):
    rows = named(make_rows(600))
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "validation.jsonl", named(make_rows(100, seed=3)))
    levers = dict(ema=0.9, embedding_dropout=0.3, schedule="cosine", epochs=3)
    whole = train(Config(dataset=str(data), output_dir=str(tmp_path / "whole"), **{**TINY_SETTINGS, **levers}),
                  quiet=True)

    config = Config(dataset=str(data), output_dir=str(tmp_path / "cut"), **{**TINY_SETTINGS, **levers})
    resumed = resumed_after_ctrl_c(config, 50, monkeypatch)
    assert resumed["validation"] == whole["validation"]
    assert (tmp_path / "cut" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    record = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert record["settings"]["ema"] == 0.9 and record["settings"]["schedule"] == "cosine"


def test_the_ema_follows_the_weights_early_and_averages_them_later():
    update = loop_module.ema_warming_up(0.999)
    averaged = [torch.zeros(3)]
    for n in range(1, 101):  # the weights jump from 0 (the first update copies them) to 1 and stay
        update(averaged, [torch.ones(3)], torch.tensor(n))
    assert averaged[0].min() > 0.85  # a fixed 0.999 would still be at 0.1
    before = averaged[0].clone()
    update(averaged, [torch.full((3,), 101.0)], torch.tensor(1_000_000))  # long after: the decay asked for
    assert torch.allclose(averaged[0], before + 0.001 * (101 - before))


def test_quantized_predictions_agree_with_float_ones(tiny_run, cli):
    from lstmcli.predict import Predictor

    texts = [" ".join(r["text"] for r in make_rows(3, seed=s)) for s in range(40)]
    exact = Predictor.load(tiny_run, device="cpu", precision="fp32").predict(texts)
    quantized = Predictor.load(tiny_run, device="cpu", quantize=True).predict(texts)
    assert sum(a.label == b.label for a, b in zip(exact, quantized)) >= 38
    assert max(abs(a.probability - b.probability) for a, b in zip(exact, quantized)) < 0.05
    code, out, _ = cli("eval", "--model-dir", tiny_run, "--quantize", "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.85
    code, _, err = cli("predict", "--model-dir", tiny_run, "--quantize", "--device", "cuda", "x")
    assert code == 1 and "CUDA" in err


def test_auto_resume_resumes_a_state_and_replaces_only_an_unsaved_start(tmp_path):
    from lstmcli.checkpoint import restartable

    assert restartable(tmp_path / "new") == (False, False)
    (tmp_path / "config.json").write_text("{}")  # a run stopped before it saved anything
    assert restartable(tmp_path) == (False, True)
    (tmp_path / "model.safetensors").write_text("weights")  # something of value: never replaced
    assert restartable(tmp_path) == (False, False)
    (tmp_path / "resume.json").write_text("{}")
    assert restartable(tmp_path) == (True, False)


def test_ordinal_smoothing_makes_a_near_miss_cost_less_than_a_far_one():
    from lstmcli.runtime import setup
    from lstmcli.train import classification_loss

    runtime = setup("cpu", "fp32", 1)
    classes = torch.tensor([2, 2])
    near, far = torch.full((2, 5), -4.0), torch.full((2, 5), -4.0)
    near[:, 1] = far[:, 4] = 4.0  # confidently wrong: one class away, three classes away
    plain = classification_loss(Config(), classes.numpy(), 5, runtime)
    assert plain(near, classes).item() == pytest.approx(plain(far, classes).item())
    ordinal = classification_loss(Config(ordinal_smoothing=0.2), classes.numpy(), 5, runtime)
    assert ordinal(near, classes).item() < ordinal(far, classes).item() - 0.5
    # A class at either end gives all of the share to its one neighbour: the best logits put 0.8 / 0.2 there.
    best = torch.log(torch.tensor([[0.8, 0.2, 1e-9, 1e-9, 1e-9]]))
    worse = torch.log(torch.tensor([[0.9, 0.1, 1e-9, 1e-9, 1e-9]]))
    assert ordinal(best, torch.tensor([0])).item() < ordinal(worse, torch.tensor([0])).item()


def test_ordinal_smoothing_trains_and_is_range_checked(tmp_path, tiny_dataset, cli):
    result = train(settings(tmp_path, tiny_dataset, ordinal_smoothing=0.2), quiet=True)
    assert result["validation"]["accuracy"] > 0.7  # still learns the (two-class) task
    code, _, err = cli("train", "--dataset", tiny_dataset, "--ordinal-smoothing", "1.5",
                       "--output-dir", tmp_path / "bad")
    assert code == 1 and "--ordinal-smoothing" in err and len(err.strip().splitlines()) == 1
