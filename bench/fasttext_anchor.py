"""fastText supervised on the same splits: the speed/accuracy anchor users know (make bench, make reproduce)."""

from __future__ import annotations

import json
import random
import re
import tempfile
import time
from pathlib import Path

TOKEN = re.compile(r"\w+|[^\w\s]")


def prepare(text: str) -> str:
    """Lower-cased, punctuation split off: what fastText's own examples do to text."""
    return " ".join(TOKEN.findall(text.lower()))


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train_and_test(train_path: Path, test_path: Path, *, threads: int = 2, epoch: int = 5, lr: float = 0.5,
                   seed: int = 0) -> dict:
    """Train on train_path (shuffled, since release files are often sorted by label), test on test_path."""
    import fasttext

    rows = read(train_path)
    random.Random(seed).shuffle(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.writelines(f"__label__{r['label']} {prepare(r['text'])}\n" for r in rows)
        f.flush()
        started = time.perf_counter()
        model = fasttext.train_supervised(f.name, wordNgrams=2, thread=threads, epoch=epoch, lr=lr, seed=seed,
                                          verbose=0)
        seconds = time.perf_counter() - started
    test = read(test_path)
    predicted, _ = model.predict([prepare(r["text"]).replace("\n", " ") for r in test])
    correct = sum(p[0] == f"__label__{r['label']}" for p, r in zip(predicted, test))
    return dict(accuracy=correct / len(test), train_seconds=seconds,
                settings=f"wordNgrams=2, epoch={epoch}, lr={lr}, thread={threads}")
