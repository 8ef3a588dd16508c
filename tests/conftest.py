"""Shared test helpers: generated datasets, a small trained run, and ways to call the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

# Tests never touch the network: the Hub libraries are told they are offline.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE)

# A model small enough to train in a second or two, and still learn the generated data.
TINY = ["--embed-dim", "16", "--hidden-size", "16", "--epochs", "4", "--batch-size", "16", "--lr", "0.01",
        "--threads", "1", "--min-frequency", "1", "--quiet"]
TINY_SETTINGS = dict(embed_dim=16, hidden_size=16, epochs=4, batch_size=16, lr=0.01, threads=1, min_frequency=1)

FILLER = ("the film food service book plot staff place hotel story it this was is really quite very and "
          "a an of to for with at our my their cast ending room meal").split()
CLASS_WORDS = {
    2: [["awful", "terrible", "boring", "dreadful", "poor", "dull", "horrible", "disappointing"],
        ["great", "wonderful", "excellent", "lovely", "superb", "delightful", "brilliant", "enjoyable"]],
    5: [["atrocious", "abysmal", "dreadful", "appalling"], ["poor", "weak", "mediocre", "bland"],
        ["okay", "average", "fine", "passable"], ["good", "nice", "pleasant", "solid"],
        ["superb", "magnificent", "outstanding", "brilliant"]],
}


def make_rows(count: int, classes: int = 2, seed: int = 0) -> list[dict]:
    """Texts of filler words with one or two words that give the class away; label is an int id."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % classes
        words = rng.choices(FILLER, k=rng.randint(3, 14))
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(CLASS_WORDS[classes][label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def named(rows: list[dict], names=("negative", "positive")) -> list[dict]:
    return [{"text": r["text"], "label": names[r["label"]]} for r in rows]


def write_splits(folder: Path, *, train: int, validation: int, test: int, seed: int) -> Path:
    """train/validation/test.jsonl of generated rows with string labels, each split from its own seed."""
    for offset, (split, count) in enumerate((("train", train), ("validation", validation), ("test", test))):
        write_jsonl(folder / f"{split}.jsonl", named(make_rows(count, seed=seed + offset)))
    return folder


def write_uninformative_splits(folder: Path) -> Path:
    """train/validation.jsonl of filler texts that say nothing about their labels, three in four 'positive':
    the best a model can do on validation is to answer 'positive' every time."""
    rng = random.Random(0)
    for split, count in (("train", 200), ("validation", 40)):
        write_jsonl(folder / f"{split}.jsonl",
                    [{"text": " ".join(rng.choices(FILLER, k=6)), "label": "negative" if i % 4 == 0 else "positive"}
                     for i in range(count)])
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder with train/validation/test.jsonl, string labels negative/positive."""
    return write_splits(tmp_path_factory.mktemp("tiny"), train=400, validation=100, test=100, seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    """A trained run on tiny_dataset (trained in-process through the library)."""
    from lstmcli.config import Config
    from lstmcli.train import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(Config(dataset=str(tiny_dataset), output_dir=str(out), bidirectional=True, **TINY_SETTINGS), quiet=True)
    return out


def run_cli(*args, input: str | None = None, cwd: Path | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """lstmcli in a new process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "lstmcli", *map(str, args)], input=input, capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=timeout, env={**os.environ, **OFFLINE, **(env or {})})


@pytest.fixture
def cli(capsys):
    """lstmcli's main() in this process (same code path as the console script, without the start-up cost);
    returns (exit code, stdout, stderr)."""
    from lstmcli.cli import main

    def call(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user error: non-zero exit, one line on stderr starting with 'error:', no traceback."""
    assert code != 0, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)


def needs_shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared benchmark datasets live beside the checkout)")
    return path
