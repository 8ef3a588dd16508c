"""Self-training: `lstmcli train --unlabeled TEXT` learns from unlabelled text while it trains a classifier.

    1. a teacher trains on the labelled rows, as a run without --unlabeled would
    2. it labels every unlabelled text; of each class it predicts, the most confident texts are kept, in
       the labelled rows' class proportions (a larger share each round, as the teacher gets better)
    3. a student trains from scratch, with dropout, on the labelled rows and those pseudo-labels, and is the
       next round's teacher; the last student is the run's model

(Yarowsky 1995; Xie et al. 2020, "Self-training with noisy student".) Measured on IMDB with 1,000 labels and the
other 21,432 train reviews as unlabelled text (recipes/imdb.toml, --epochs 20, --weight-decay 0.01, --adversarial
none, seeds 0/1/2): test accuracy 0.834/0.836/0.834 in 6-7 minutes, against 0.784/0.793/0.793 from the labels
alone; with --adversarial at --adversarial-epsilon 5 (a far better teacher: 0.819-0.824 alone) 0.838/0.850/0.837.
It needs unlabelled text of the labels' kind: Rotten Tomatoes sentences self-trained on IMDB reviews lost 2 points.
Fine-tuning from a language model pretrained on the same text (lstmcli pretrain, BiLSTM-128, perplexity 148)
reached only 0.739-0.773: at this size its features were no better than a random LSTM's for a linear probe (0.678
vs 0.671 on 4,000 test reviews).

Each round but the last is an ordinary run directory in OUT/rounds/N (eval and report read it); the last
trains in OUT itself. A killed run resumes in the round it was in.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, distributed, loop, tokenized
from . import train as classifier
from .batching import eval_plan, prefetch
from .config import Config
from .data import RowCounts, Source
from .errors import UserError
from .predict import softmax
from .runtime import Runtime
from .terminal import Reporter
from .tokenizer import unknown_id
from .unlabeled import TextSources, open_unlabeled


def kept_share(round_number: int) -> float:
    """The share of the unlabelled texts that student `round_number` (from 1) learns from."""
    return min(0.9, 0.4 + 0.2 * round_number)  # measured on IMDB: 0.6 in round 1, 0.8 in round 2


def is_dataset(spec: str, config: Config) -> bool:
    """Whether an --unlabeled source is the labelled dataset itself (its unlabelled rows are the train rows
    that --max-train-samples leaves out)."""
    return spec == config.dataset or Path(spec).resolve() == Path(config.dataset).resolve()


def open_pool(config: Config, dataset: Source, test_split: str | None) -> TextSources:
    """The --unlabeled sources other than the dataset itself, checked (text column, not the test split)."""
    if not config.max_train_samples and any(is_dataset(spec, config) for spec in config.unlabeled):
        raise UserError(f"--unlabeled {config.dataset} is the labelled dataset, and without --max-train-samples "
                        "every train row is labelled: name other text, or keep rows unlabelled with "
                        "--max-train-samples N.")
    external = [spec for spec in config.unlabeled if not is_dataset(spec, config)]
    return open_unlabeled(external, config, dataset, test_split, into=TextSources([], [], [], None))


def fit(data: classifier.PreparedData, sources: TextSources, config: Config, runtime: Runtime, out: Path,
        record: dict, report: Reporter, *, resume: bool, hooks: loop.Hooks | None, cache_dir: Path | None
        ) -> loop.Outcome:
    """Train the teacher and config.self_training_rounds students; returns the last student's outcome."""
    labelled = classifier.labelled_rows(data, config, runtime)
    tokens, pool = pool_rows(data, sources, labelled, config, runtime, report, out, cache_dir)
    training, seconds = labelled, 0.0
    student = replace(config, epochs=config.self_training_epochs)
    for number in range(config.self_training_rounds):
        outcome = run_round(number, training, labelled, data, student if number else config, runtime,
                            out / checkpoint.ROUNDS / str(number), record, report, resume=resume, hooks=None)
        seconds += outcome.seconds
        training = taught(outcome.kept, tokens, pool, labelled, data, kept_share(number + 1), config, runtime)
    outcome = run_round(config.self_training_rounds, training, labelled, data, student, runtime, out, record, report,
                        resume=resume, hooks=hooks)
    return replace(outcome, seconds=round(seconds + outcome.seconds, 2))


def taught(teacher: torch.nn.Module, tokens, pool: np.ndarray, labelled: classifier.LabelledRows, data,
           share: float, config: Config, runtime: Runtime) -> classifier.LabelledRows:
    """The labelled rows and the teacher's most confident pseudo-labels: what the next student trains on."""
    rows, classes = confident_rows(probabilities(teacher, tokens, pool, config, runtime),
                                   labelled.classes[labelled.rows], share, len(data.labels.names))
    pseudo = np.concatenate([data.train_classes, np.zeros(len(tokens) - len(data.train), data.train_classes.dtype)])
    pseudo[pool[rows]] = classes  # rows of the pool only: the labelled rows keep their labels
    return classifier.LabelledRows(tokens, pseudo, np.union1d(labelled.rows, pool[rows]))


def pool_rows(data, sources: TextSources, labelled, config: Config, runtime: Runtime, report: Reporter, out: Path,
              cache_dir: Path | None) -> tuple[tokenized.Joined, np.ndarray]:
    """One token store holding the train split and every other unlabelled source, and the rows of it to
    pseudo-label: the unlabelled sources' and, when the dataset itself is named, its unlabelled train rows."""
    parts, pool = [data.train.encoded], []
    if any(is_dataset(spec, config) for spec in config.unlabeled):
        pool.append(np.setdiff1d(np.arange(len(data.train)), labelled.rows))
    if sources.streams:
        counts = RowCounts()
        key = dict(fingerprint=sources.fingerprint, columns=sources.columns, strict=config.strict)
        external = classifier.tokenize_split(out, "unlabeled", key, sources.rows(config, runtime, held_out=None,
                                                                                 counts=counts),
                                             counts, data.tokenizer, config, runtime, report, cache_dir=cache_dir)
        pool.append(np.arange(len(data.train), len(data.train) + len(external)))
        parts.append(external.encoded)
        for line in sources.describe(config):
            report.say(line.replace("text:", "unlabelled:", 1))
    pool = np.concatenate(pool) if pool else np.zeros(0, dtype=np.int64)
    if distributed.max_int(len(pool), runtime) == 0:
        raise UserError("--unlabeled has no usable texts: check the files and their text column.")
    return tokenized.Joined(parts), pool


def run_round(number: int, training: classifier.LabelledRows, labelled: classifier.LabelledRows, data,
              config: Config, runtime: Runtime, directory: Path, record: dict, report: Reporter, *, resume: bool,
              hooks: loop.Hooks | None) -> loop.Outcome:
    """One ordinary training run in `directory`; a round finished before a resume is read back instead."""
    report.say(f"self-training: {f'student {number}' if number else 'teacher'} on {len(training.rows):,} rows "
               f"({len(training.rows) - len(labelled.rows):,} pseudo-labelled), in {directory}")
    intermediate = directory != Path(config.output_dir)  # a round before the last, in OUT/rounds/N
    finished = resume and intermediate and (directory / checkpoint.METRICS).exists()
    resuming = resume and (directory / checkpoint.RESUME).exists()
    model = classifier.build_model(data, config, runtime, report, resume=resuming or finished)
    if finished:
        saved = checkpoint.read_json(directory / checkpoint.CONFIG, "")
        model.load_state_dict(checkpoint.read_tensors(directory / checkpoint.WEIGHTS,
                                                      saved["weights"].get(checkpoint.WEIGHTS)))
        report.say(f"self-training: {directory} finished before; its weights are read back")
        return loop.Outcome({}, model, checkpoint.read_json(directory / checkpoint.METRICS, "")["train"]["seconds"])
    if intermediate:
        record = start_round_dir(directory, record, data.tokenizer, resuming, runtime)
    objective = classifier.classifier_objective(model, training, data, config, runtime)
    if not config.init_from:  # pretrained words keep their meaning, whether or not the round's rows hold them
        objective = reading_unseen_words_as_unknown(objective, training, data.tokenizer, runtime)
    outcome = loop.fit(objective, config, runtime, directory, record, report, resume=resuming, hooks=hooks)
    if intermediate and runtime.is_main:
        checkpoint.write_json(directory / checkpoint.METRICS, dict(
            validation=objective.validate(outcome.kept).best, best=outcome.position["best"],
            train=dict(rows=len(training.rows), steps=outcome.position["step"], seconds=outcome.seconds)))
    distributed.barrier(runtime)
    return outcome


def reading_unseen_words_as_unknown(objective: loop.Objective, training: classifier.LabelledRows, tokenizer,
                                    runtime: Runtime) -> loop.Objective:
    """The objective, with the embedding of every word that none of the round's rows holds set to the unknown
    word's before each evaluation (so in the kept weights too). The vocabulary covers all the text; a teacher
    trained on a few labelled rows would otherwise read the words it never saw as their random vectors:
    on IMDB with 1,000 labels that is most of the vocabulary."""
    seen = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for start in range(0, len(training.rows), 1024):
        ids, _ = training.tokens.padded(training.rows[start:start + 1024])
        seen[np.unique(ids)] = 1
    unseen = torch.from_numpy(np.flatnonzero(distributed.sum_array(seen, runtime) == 0))
    unknown = unknown_id(tokenizer)
    validate = objective.validate

    def validate_reading_unseen_as_unknown(kept):
        with torch.no_grad():
            kept.embedding.weight[unseen.to(kept.embedding.weight.device)] = kept.embedding.weight[unknown].clone()
        return validate(kept)

    return replace(objective, validate=validate_reading_unseen_as_unknown)


def start_round_dir(directory: Path, record: dict, tokenizer, resuming: bool, runtime: Runtime) -> dict:
    """The config.json (and tokenizer.json) of an intermediate round's run directory."""
    if resuming:
        return checkpoint.read_json(directory / checkpoint.CONFIG, "")
    record = {**record, "weights": {}}
    if runtime.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(directory / checkpoint.TOKENIZER, tokenizer.to_str())
        checkpoint.write_json(directory / checkpoint.CONFIG, record)
    distributed.barrier(runtime)
    return record


def probabilities(model: torch.nn.Module, tokens, rows: np.ndarray, config: Config, runtime: Runtime) -> np.ndarray:
    """The model's class probabilities for `rows` of `tokens`, in that order."""
    from .backends import torch_scorer

    scorer = torch_scorer(model.eval(), runtime)
    plan = eval_plan(tokens.lengths[rows], classifier.eval_batch_size(config))  # positions in `rows`
    result = None
    for positions, (ids, lengths) in zip(plan, prefetch(lambda batch: tokens.padded(rows[batch]), plan)):
        batch = softmax(scorer(ids, lengths).astype(np.float64))
        if result is None:
            result = np.empty((len(rows), batch.shape[1]))
        result[positions] = batch
    return result


def confident_rows(probabilities: np.ndarray, labelled_classes: np.ndarray, share: float, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices into `probabilities` of the texts a student learns from, and their pseudo-labels: per class,
    the most confident of the texts predicted as it, `share` of all texts in the labelled class proportions."""
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    prior = np.bincount(labelled_classes, minlength=num_classes) / max(1, len(labelled_classes))
    chosen = []
    for class_id in range(num_classes):
        candidates = np.flatnonzero(predicted == class_id)
        quota = int(share * len(predicted) * prior[class_id])
        chosen.append(candidates[np.argsort(-confidence[candidates], kind="stable")[:quota]])
    rows = np.sort(np.concatenate(chosen))
    return rows, predicted[rows]
