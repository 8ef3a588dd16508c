"""Labels and probabilities for new texts, from a trained run."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Scorer, load_scorer
from .batching import eval_plan
from .checkpoint import Run, load_run
from .data import FORMATS, _suffix, open_source, pick_columns, read_errors, read_rows
from .errors import UserError
from .tokenizer import encode

CHUNK = 2048  # texts read, encoded and sorted by length together


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


class Predictor:
    """A run's tokenizer and model (torch or ONNX), ready to label texts in length-sorted batches.

        from lstmcli import Predictor
        predictor = Predictor.load("runs/imdb")            # backend="auto": ONNX when exported
        predictor.predict(["a wonderful film"])[0].label   # 'positive'
    """

    def __init__(self, run: Run, scorer: Scorer, batch_size: int = 256):
        self.run, self.scorer, self.batch_size = run, scorer, batch_size
        self.labels = run.labels.names

    @classmethod
    def load(cls, model_dir: str | Path, *, backend: str = "auto", batch_size: int = 256, device: str = "auto",
             threads: int = 0, quantize: bool = False, precision: str | None = None) -> Predictor:
        """Open a run directory; `backend` auto|torch|onnx, `quantize` for int8 weights (model.int8.onnx on
        onnx), `device`/`precision` for torch."""
        run = load_run(model_dir)
        scorer = load_scorer(run, backend, device=device, threads=threads, quantize=quantize, precision=precision)
        return cls(run, scorer, batch_size)

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(texts, classes) float32 probabilities, in the order of `self.labels`."""
        probabilities = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return probabilities
        encoded = encode(self.run.tokenizer, texts, self.run.config.max_length, self.run.config.truncation)
        for rows in eval_plan(encoded.lengths, self.batch_size):
            probabilities[rows] = softmax(self.scorer.logits(*encoded.padded(rows)))
        return probabilities

    def predict(self, texts: list[str]) -> list[Prediction]:
        probabilities = self.probabilities(texts)
        best = probabilities.argmax(axis=1)
        return [Prediction(text, self.labels[b], float(p[b]), {n: float(x) for n, x in zip(self.labels, p)})
                for text, b, p in zip(texts, best, probabilities)]

    def predict_stream(self, chunks: Iterable[list[str]]) -> Iterator[Prediction]:
        for texts in chunks:
            yield from self.predict(texts)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def input_chunks(texts: list[str], file: str | None, text_column: str | None) -> Iterator[list[str]]:
    """Texts from the arguments, from stdin ('-'), or from a file: plain lines, or a csv/tsv/json(l)/
    parquet file's text column."""
    if file is None and texts == ["-"]:
        file = "-"
    elif texts and file is not None:
        raise UserError("give texts or --file, not both.")
    if file is None:
        if not texts:
            raise UserError("nothing to predict: give texts, --file PATH, or - to read lines from stdin.")
        yield texts
        return
    if file == "-":
        yield from _line_chunks(sys.stdin.buffer, "stdin")
        return
    path = Path(file)
    if not path.is_file():
        raise UserError(f"--file {file} not found: check the path.")
    if _suffix(path) in FORMATS:
        source = open_source(file)
        stream = source.split("train")
        picked = pick_columns(stream, file, text_column, with_label=False)
        if picked.notes:
            from .terminal import Reporter  # rich: imported only when needed, predict starts cold often

            Reporter().warn(picked.notes[0])
        for chunk, _ in read_rows(stream, file, picked.text, None):
            yield chunk
        return
    with path.open("rb") as f:
        yield from _line_chunks(f, file)


def _line_chunks(binary, name: str) -> Iterator[list[str]]:
    chunk = []
    with read_errors(name):
        for number, raw in enumerate(binary, start=1):
            try:
                chunk.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as e:
                raise UserError(f"{name}, line {number}, is not valid UTF-8 (byte {raw[e.start:e.start + 1]!r}): "
                                "re-encode it, e.g. iconv -f cp1252 -t utf-8.") from None
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk
