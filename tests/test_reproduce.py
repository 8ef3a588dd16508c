"""make reproduce's code path on a tiny recipe: it trains, evaluates, runs fastText and writes RESULTS.md and
bench/reproduce.json, keeping the rows it did not rerun (and dropping those it no longer defines)."""

import json
import sys

import pytest

from conftest import ROOT, write_splits

pytest.importorskip("fasttext", reason="fastText is the anchor of make reproduce (make install-bench)")
sys.path.insert(0, str(ROOT / "bench"))
import reproduce  # noqa: E402


def test_reproduce_writes_a_row_per_recipe_and_keeps_the_others(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    write_splits(tmp_path / "shared" / "datasets" / "tiny", train=300, validation=60, test=80, seed=5)
    (checkout / "recipes").mkdir(parents=True)
    (checkout / "bench").mkdir()
    (checkout / "recipes" / "tiny.toml").write_text(
        'dataset = "../shared/datasets/tiny"\nembed_dim = 16\nhidden_size = 16\nepochs = 4\nbatch_size = 16\nlr = 0.01\n'
        'min_frequency = 1\nthreads = 1\n')
    other = dict(set="imdb", setting="unlabelled text", accuracy=0.93, goal=0.93, fasttext=0.896, minutes=30.0,
                 command="lstmcli pretrain ...", recipe="recipes/imdb-pretrained.toml", trained_on="imdb/train",
                 macro_f1=0.93, train_minutes=29.0, fasttext_seconds=10.0, fasttext_settings="x", seeds={"0": 0.93})
    renamed = dict(other, setting="a setting renamed since")  # a row the script no longer defines
    (checkout / "bench" / "reproduce.json").write_text(json.dumps([other, renamed]))
    monkeypatch.setattr(reproduce, "ROOT", checkout)
    monkeypatch.setattr(reproduce, "SHARED", tmp_path / "shared" / "datasets")
    monkeypatch.setattr(reproduce, "JSON", checkout / "bench" / "reproduce.json")
    monkeypatch.setattr(reproduce, "RECIPES", {"tiny": ("tiny", 0.8)})
    (checkout / "recipes" / "tiny-vectors.toml").write_text(
        'dataset = "../shared/datasets/tiny"\nobjective = "word-vectors"\nembed_dim = 16\nepochs = 2\nbatch_size = 16\n'
        'min_frequency = 1\nthreads = 1\n')
    monkeypatch.setattr(reproduce, "PRETRAINED", {
        "imdb": ("imdb", "unlabelled text", "recipes/imdb-vectors.toml", "recipes/imdb-pretrained.toml", [], 0.93, None),
        "tiny": ("tiny", "vectors, default flags", "recipes/tiny-vectors.toml", None, ["--max-train-samples", "60"],
                 0.8, 60)})
    monkeypatch.setattr(reproduce, "SELF_TRAINED", {"tiny": ("tiny", "self-trained", "recipes/tiny.toml", [
        "--max-train-samples", "60", "--unlabeled", "../shared/datasets/tiny", "--self-training-rounds", "1"], 0.8, 60)})
    monkeypatch.setattr(sys, "argv", ["reproduce.py", "--only", "tiny", "--pretrained", "tiny", "--self-trained", "tiny",
                                      "--seeds", "0", "1"])

    reproduce.main()

    rows = json.loads((checkout / "bench" / "reproduce.json").read_text())
    assert sorted(r["setting"] for r in rows) == ["labels only", "self-trained", "unlabelled text",
                                                  "vectors, default flags"]
    row = rows[0]
    assert {"set", "setting", "accuracy", "goal", "fasttext", "minutes", "command"} <= row.keys()
    assert row["set"] == "tiny" and row["goal"] == 0.8 and set(row["seeds"]) == set(row["validation"]) == {"0", "1"}
    assert row["accuracy"] == pytest.approx(sum(row["seeds"].values()) / 2, abs=1e-4)
    assert row["accuracy"] > 0.7 and 0 < row["fasttext"] <= 1 and row["minutes"] > 0
    assert row["command"].startswith("lstmcli train --config recipes/tiny.toml")
    results = (checkout / "RESULTS.md").read_text()
    assert f"**{row['accuracy']:.4f}**" in results and "unlabelled text" in results
    assert (checkout / "runs" / "recipes" / "tiny" / "model.safetensors").exists()
    self_trained = next(r for r in rows if r["setting"] == "self-trained")
    assert self_trained["trained_on"] == "tiny/train (60 labels)" and set(self_trained["seeds"]) == {"0", "1"}
    assert "--unlabeled ../shared/datasets/tiny" in self_trained["command"]
    assert (checkout / "runs" / "recipes" / "tiny-self-trained" / "rounds" / "0" / "model.safetensors").exists()
    pretrained = next(r for r in rows if r["setting"] == "vectors, default flags")
    assert pretrained["recipe"] is None and pretrained["trained_on"] == "tiny/train (60 labels)"
    assert pretrained["command"].startswith("lstmcli pretrain --config recipes/tiny-vectors.toml --output-dir "
                                            "runs/recipes/tiny-vectors")
    assert ("lstmcli train --dataset ../shared/datasets/tiny --init-from runs/recipes/tiny-vectors "
            "--max-train-samples 60") in pretrained["command"]
    assert pretrained["pretrain_minutes"] >= 0 and "none: defaults" in results
