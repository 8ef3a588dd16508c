"""Labels and probabilities for new texts, from a trained run."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batching import eval_plan
from .checkpoint import Run, load_run
from .data import FORMATS, _suffix, open_source, pick_columns, read_errors, read_rows
from .errors import UserError
from .evaluate import logits_of
from .runtime import Runtime, setup
from .tokenizer import encode

CHUNK = 2048  # texts read, encoded and sorted by length together


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float]


class Predictor:
    """A run's model and tokenizer, ready to label texts in length-sorted batches."""

    def __init__(self, run: Run, *, device: str = "auto", threads: int = 0, batch_size: int = 256,
                 quantize: bool = False, precision: str | None = None):
        self.run = run
        self.batch_size = batch_size
        self.model, self.runtime = ready_model(run, device=device, threads=threads, quantize=quantize,
                                               precision=precision)

    @classmethod
    def load(cls, model_dir: str | Path, **options) -> Predictor:
        return cls(load_run(model_dir), **options)

    def predict(self, texts: list[str]) -> list[Prediction]:
        if not texts:
            return []
        encoded = encode(self.run.tokenizer, texts, self.run.config.max_length, self.run.config.truncation)
        plan = eval_plan(encoded.lengths, self.batch_size)
        probabilities = np.zeros((len(texts), len(self.run.labels.names)), dtype=np.float32)
        batches = ((*encoded.batch(rows), torch.from_numpy(rows)) for rows in plan)
        for logits, (rows,) in logits_of(self.model, batches, self.runtime):
            probabilities[rows.numpy()] = torch.softmax(logits, dim=1).numpy()
        names = self.run.labels.names
        best = probabilities.argmax(axis=1)
        return [Prediction(text, names[b], float(p[b]), {n: float(x) for n, x in zip(names, p)})
                for text, b, p in zip(texts, best, probabilities)]

    def predict_stream(self, chunks: Iterable[list[str]]) -> Iterator[Prediction]:
        for texts in chunks:
            yield from self.predict(texts)


def ready_model(run: Run, *, device: str, threads: int, quantize: bool = False,
                precision: str | None = None) -> tuple[torch.nn.Module, Runtime]:
    """The run's model for inference and the runtime it runs in: in `precision` (default: the run's), or
    with dynamic int8 weights for the LSTM and the classifier (--quantize, CPU only)."""
    from .model import quantize as quantize_model

    runtime = setup(device, "fp32" if quantize else precision or run.config.precision, threads)
    model = run.build_model(runtime.device)
    if not quantize:
        return model, runtime
    if runtime.device.type != "cpu":
        raise UserError("--quantize runs on CPU only: add --device cpu.")
    return quantize_model(model), runtime


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
