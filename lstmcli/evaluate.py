"""How good a model is: accuracy, macro-F1, per-class precision / recall / F1, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .batching import eval_plan, prefetch
from .errors import UserError
from .terminal import Reporter
from .tokenizer import Encoded, encode

if TYPE_CHECKING:  # only training's confusion() takes a torch model; eval on ONNX never imports torch
    import torch

    from .runtime import Runtime

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids, lengths) -> logits: a backends.Scorer's


def confusion(model: torch.nn.Module, encoded: Encoded, class_ids: np.ndarray, num_classes: int, batch_size: int,
              runtime: Runtime) -> tuple[np.ndarray, float]:
    """Confusion matrix (rows: true class, columns: predicted) and the summed loss of a torch model being
    trained, over one tokenized split."""
    from .backends import torch_scorer

    was_training = model.training
    model.eval()
    try:
        return count_confusion(torch_scorer(model, runtime), encoded, class_ids, num_classes, batch_size)
    finally:
        model.train(was_training)


def count_confusion(logits_of: Logits, encoded: Encoded, class_ids: np.ndarray, num_classes: int,
                    batch_size: int) -> tuple[np.ndarray, float]:
    """Confusion matrix and summed cross-entropy over one tokenized split, with any backend."""
    def make_batch(rows):
        return (*encoded.padded(rows), class_ids[rows].astype(np.int64))  # int64: the sums below

    matrix = np.zeros(num_classes * num_classes, dtype=np.int64)
    loss = 0.0
    for ids, lengths, targets in prefetch(make_batch, eval_plan(encoded.lengths, batch_size)):
        logits = logits_of(ids, lengths)
        loss += cross_entropy_sum(logits, targets)
        matrix += np.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    return matrix.reshape(num_classes, num_classes), loss


def cross_entropy_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    top = logits.max(axis=1)
    log_total = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return float((log_total - logits[np.arange(len(targets)), targets]).sum())


def confusion_of_chunks(logits_of: Logits, tokenizer, chunks: Iterable[tuple[list[str], list[int]]],
                        num_classes: int, max_length: int, truncation: str, batch_size: int
                        ) -> tuple[np.ndarray, float]:
    """The same as `count_confusion`, over (texts, class ids) chunks streamed from any dataset."""
    matrix, loss = np.zeros((num_classes, num_classes), dtype=np.int64), 0.0
    for texts, class_ids in chunks:
        part, part_loss = count_confusion(logits_of, encode(tokenizer, texts, max_length, truncation),
                                          np.asarray(class_ids, dtype=np.int64), num_classes, batch_size)
        matrix += part
        loss += part_loss
    return matrix, loss


def metrics(matrix: np.ndarray, names: list[str], loss: float | None = None) -> dict:
    """Accuracy, macro-F1 and per-class scores from a confusion matrix (rows true, columns predicted)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    total = int(matrix.sum())
    correct = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(correct, predicted, out=np.zeros(len(names)), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros(len(names)), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(names)),
                   where=precision + recall > 0)
    # Like scikit-learn, average over the classes that occur in the truth or the predictions.
    present = (support > 0) | (predicted > 0)
    common = int(support.argmax())
    result = dict(
        accuracy=float(correct.sum() / total) if total else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class={name: dict(precision=float(precision[i]), recall=float(recall[i]), f1=float(f1[i]),
                              support=int(support[i])) for i, name in enumerate(names)},
        confusion_matrix=matrix.tolist(),
        labels=list(names),
        num_examples=total,
        # The accuracy of answering the most common class for every text: what a model must beat to have learned
        # anything. None where fewer than two classes occur.
        majority=(dict(label=names[common], accuracy=float(support[common] / total)) if (support > 0).sum() > 1
                  else None),
    )
    if loss is not None and total:
        result["loss"] = loss / total
    return result


def no_better_than_majority(result: dict) -> bool:
    """Whether answering the split's most common class for every text scores as well as the model did."""
    return bool(result["majority"]) and result["accuracy"] <= result["majority"]["accuracy"]


def evaluate_run(model_dir, *, dataset: str | None = None, dataset_config: str | None = None,
                 split: str | None = None, text_column: str | None = None, label_column: str | None = None,
                 batch_size: int = 256, device: str = "auto", threads: int = 0, quantize: bool = False,
                 backend: str = "auto", validation: bool = False) -> dict:
    """Metrics of a trained run on a split: by default the run's test split (else its validation data;
    `validation`: always the latter); any other dataset works if its labels are among the run's. A single
    data file is evaluated whole. `backend`: see backends.load_scorer."""
    from .backends import load_scorer
    from .checkpoint import load_run

    run = load_run(model_dir)
    rows = evaluation_rows(run, dataset=dataset, dataset_config=dataset_config, split=split,
                           text_column=text_column, label_column=label_column, validation=validation)
    scorer = load_scorer(run, backend, device=device, threads=threads, quantize=quantize)
    matrix, loss = confusion_of_chunks(scorer.logits, run.tokenizer, rows.chunks, len(run.labels.names),
                                       run.config.max_length, run.config.truncation, batch_size)
    if matrix.sum() == 0:
        raise UserError(f"{rows.what} has no usable rows: check the data and --text-column / --label-column.")
    result = metrics(matrix, run.labels.names, loss)
    result.update(dataset=rows.dataset, split=rows.split, backend=scorer.description)
    return result


@dataclass
class EvaluationRows:
    """The (texts, class ids) chunks of the split to evaluate, and what to call it."""
    chunks: Iterator[tuple[list[str], list[int]]]
    dataset: str
    split: str
    what: str


def default_split(source, run, own_data: bool, validation: bool) -> tuple[str, tuple[float, bool] | None]:
    """The split to score when none is named, and the hashed holdout to keep of it (a run that validated on a
    share of its train split): the run's own test (or validation) split, else another file's only split, else
    the other dataset's test, validation or first split."""
    if own_data:
        recorded = run.record["data"]["splits"]
        split = (None if validation else recorded["test"]) or recorded["validation"]
        if split not in source.splits:
            return recorded["train"], (run.config.val_fraction, True)
        return split, None
    if source.is_single_file:
        return next(iter(source.splits)), None
    return next((s for s in ("test", "validation", "valid", "dev") if s in source.splits),
                next(iter(source.splits))), None


def evaluation_rows(run, *, dataset: str | None = None, dataset_config: str | None = None,
                    split: str | None = None, text_column: str | None = None,
                    label_column: str | None = None, validation: bool = False) -> EvaluationRows:
    """The split `evaluate_run` scores, streamed as (texts, class ids) chunks: the run's test split, else
    (or with `validation`) its validation data, unless another dataset or split is named."""
    from .data import column_names, open_source, pick_columns, read_rows

    settings, recorded = run.config, run.record["data"]
    own_data = dataset is None
    source = open_source(settings.dataset if own_data else dataset,
                         settings.dataset_config if own_data else dataset_config)
    split, holdout = (split, None) if split is not None else default_split(source, run, own_data, validation)
    stream = source.split(split)
    what = source.describe(split)
    columns = column_names(stream, what)
    text_column = text_column or (recorded["text_column"] if recorded["text_column"] in columns else None)
    label_column = label_column or (recorded["label_column"] if recorded["label_column"] in columns else None)
    picked = pick_columns(stream, what, text_column, label_column)
    text_column, label_column = picked.text, picked.label
    for note in picked.notes:
        Reporter().warn(note)

    lookup = run.labels.lookup()

    def class_ids(keys: list) -> list[int]:
        try:
            return [lookup[k] if k in lookup else lookup[str(k)] for k in keys]
        except KeyError as e:
            raise UserError(f"{what} has label {e.args[0]!r}, which is not among the run's labels "
                            f"({', '.join(run.labels.names)}): evaluate on data with the same label set.") from None

    chunks = ((texts, class_ids(keys)) for texts, keys in read_rows(stream, what, text_column, label_column,
                                                                    holdout=holdout))
    return EvaluationRows(chunks, source.name, split + (" (held-out share)" if holdout else ""), what)
