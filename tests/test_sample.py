"""The default data: data/sample is well-formed and the README's main command learns from it."""

import json
import re

from conftest import ROOT, run_cli


def read(split):
    return [json.loads(line) for line in (ROOT / "data" / "sample" / f"{split}.jsonl").open(encoding="utf-8")]


def test_sample_is_balanced_distinct_and_split_without_overlap():
    splits = {name: read(name) for name in ("train", "validation", "test")}
    assert sum(map(len, splits.values())) >= 1200
    normalised = {name: {re.sub(r"[^a-z0-9]+", " ", r["text"].lower()).strip() for r in rows}
                  for name, rows in splits.items()}
    assert all(len(normalised[n]) == len(splits[n]) for n in splits)  # distinct within a split
    assert not normalised["train"] & normalised["test"] and not normalised["train"] & normalised["validation"]
    assert not normalised["validation"] & normalised["test"]
    for rows in splits.values():
        labels = [r["label"] for r in rows]
        assert set(labels) == {"negative", "positive"}
        assert abs(labels.count("positive") - labels.count("negative")) <= 2
    domains = {r["domain"] for r in splits["train"]}
    assert domains == {"movies", "books", "products", "restaurants", "services"}


def test_default_command_learns_the_sample(tmp_path):
    """`lstmcli train --layers 2 --bidirectional` on the default data, then predict plain sentences."""
    run = tmp_path / "run"
    trained = run_cli("train", "--layers", "2", "--bidirectional", "--output-dir", run, "--quiet")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.7, metrics["test"]  # 220 balanced texts: chance is 0.5
    predicted = run_cli("predict", "--model-dir", run, "a wonderful, moving film",
                        "The food was cold and the staff were rude.", "I loved every minute of it.",
                        "Terrible service, never again.")
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split("\t")[0] for line in predicted.stdout.splitlines()] == \
        ["positive", "negative", "positive", "negative"]
