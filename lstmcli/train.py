"""Training a classifier, top to bottom.

    1. runtime and run directory      4. tokenized splits and labels   7. final metrics
    2. data: splits and columns       5. model, and what it trains on
    3. tokenizer                      6. the loop (loop.fit: steps, evaluations, best weights, resumable states)

`train(config)` is what `lstmcli train` calls; tests call it directly.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from . import checkpoint, distributed, lm, loop, regularize, selftrain, tokenized, wordvectors
from .batching import balanced_subset, epoch_plan
from .config import TOKENIZER_KINDS, Config, differences, from_mapping, merge
from .data import HOLDOUT, Labels, RowCounts, Source, SplitChoice, choose_splits, class_label_names, open_source, \
    pick_columns, read_rows, texts_only
from .errors import UserError
from .evaluate import confusion, metrics, no_better_than_majority
from .model import LSTMClassifier, count_parameters
from .runtime import Runtime, setup
from .terminal import Reporter
from .tokenizer import extend_vocabulary, load_tokenizer, tokenizer_from_json, train_tokenizer
from .vectors import load_vectors

def settings_for(recipe: dict, command_line: dict, resume: bool) -> Config:
    """The run's settings: defaults < recipe file < command line; on --resume the saved run's settings
    take the place of the defaults, and changing any that shape the model or data is refused."""
    wanted = merge(recipe, command_line)
    if wanted.init_from and not resume:
        wanted = lm.inherit(wanted, {**recipe, **command_line})
    if not resume:
        return wanted
    directory = Path(wanted.output_dir)
    record = checkpoint.read_json(directory / checkpoint.CONFIG, "nothing to resume; start a new run "
                                                                 "without --resume.")
    saved = Config(**from_mapping(record.get("settings", {}), str(directory / checkpoint.CONFIG)))
    resumed = merge({**saved.to_dict(), **recipe}, command_line)
    changed = differences(saved, resumed)
    if changed:
        raise UserError(f"cannot resume {directory} with different settings ({'; '.join(changed)}): drop "
                        "those flags, or start a new run with --overwrite or another --output-dir.")
    return resumed


def train(config: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          hooks: loop.Hooks | None = None, cache_dir: Path | None = None) -> dict:
    """Train a classifier as `config` says; returns the final metrics (also written to metrics.json).
    `cache_dir` keeps the tokenized splits in a folder that many runs share (tune) instead of the run's own."""
    with contextlib.ExitStack() as held:  # the run directory's lock, from claim_output_dir to the end
        return _train(config, held, resume=resume, overwrite=overwrite, quiet=quiet, hooks=hooks, cache_dir=cache_dir)


def _train(config: Config, held: contextlib.ExitStack, *, resume: bool, overwrite: bool, quiet: bool,
           hooks: loop.Hooks | None, cache_dir: Path | None) -> dict:
    # 1. runtime and run directory ------------------------------------------------------------------
    runtime, report, out = start_run(config, resume=resume, overwrite=overwrite, quiet=quiet)
    source = distributed.together(runtime, open_training_source, config)  # bad data fails before any write
    claim_output_dir(held, out, runtime, overwrite=overwrite, resume=resume)
    announce(config, runtime, report)

    # 2-4. data, tokenizer, tokenized splits and labels -----------------------------------------------
    saved = checkpoint.read_json(out / checkpoint.CONFIG, "") if resume else None
    data = prepare_data(source, config, runtime, report, out, saved, cache_dir)
    record = write_record(out, data.tokenizer, data.record, saved, config, runtime)
    if config.max_train_samples > record["data"]["rows"]["train"]:
        report.warn(f"--max-train-samples {config.max_train_samples:,} is more than the {record['data']['rows']['train']:,} "
                    "training rows: training on all of them.")
    if runtime.distributed:
        report.say(f"batch: {config.batch_size} per process, {config.batch_size * runtime.world_size} "
                   "in all")

    # 5-6. the model and the loop (with --unlabeled: a teacher, then students on its pseudo-labels) ----------
    if config.unlabeled:
        outcome = selftrain.fit(data, source.unlabeled, config, runtime, out, record, report, resume=resume,
                                hooks=hooks, cache_dir=cache_dir)
    else:
        model = build_model(data, config, runtime, report, resume=resume)
        objective = classifier_objective(model, labelled_rows(data, config, runtime), data, config, runtime)
        outcome = loop.fit(objective, config, runtime, out, record, report, resume=resume, hooks=hooks)

    # 7. final metrics, with the best weights ------------------------------------------------------------
    validation = split_metrics(outcome.kept, data.validation.encoded, data.validation_classes, data.labels, config,
                               runtime)
    final = dict(validation=validation, test=None, best=outcome.position["best"],
                 splits=record["data"]["splits"], train=dict(rows=record["data"]["rows"]["train"],
                                                             steps=outcome.position["step"], seconds=outcome.seconds,
                                                             stopped_by_deadline=outcome.stopped_by_deadline))
    if data.test is data.validation:
        final["test"] = validation
    elif data.test is not None:
        final["test"] = split_metrics(outcome.kept, data.test.encoded, data.test_classes, data.labels, config, runtime)
    if runtime.is_main:
        checkpoint.write_json(out / checkpoint.METRICS, final)
        checkpoint.remove_cache(out)
        summary = f"validation accuracy {final['validation']['accuracy']:.4f}"
        if final["test"]:
            summary += f", test accuracy {final['test']['accuracy']:.4f}"
        report.say(f"done in {final['train']['seconds']:.0f}s: {summary}; best weights in {out}")
        warn_if_nothing_learned(validation, config, report)
    distributed.barrier(runtime)
    return final


def start_run(config: Config, *, resume: bool, overwrite: bool, quiet: bool) -> tuple[Runtime, Reporter, Path]:
    """Settings checked; runtime (device, precision, threads, torchrun) set up."""
    config.validate()
    runtime = setup(config.device, config.precision, config.threads)
    distributed.start(runtime)
    return runtime, Reporter(quiet or not runtime.is_main), Path(config.output_dir)


def claim_output_dir(held: contextlib.ExitStack, out: Path, runtime: Runtime, *, overwrite: bool, resume: bool
                     ) -> None:
    """Lock the run directory (held until `held` closes: one run per directory), then make it ready."""
    def claim():
        held.enter_context(checkpoint.lock_run_dir(out))
        checkpoint.prepare_output_dir(out, overwrite=overwrite, resume=resume)

    distributed.together(runtime, lambda: runtime.is_main and claim())


def announce(config: Config, runtime: Runtime, report: Reporter) -> None:
    """The run's first status lines, once its data opened and its directory is ready."""
    if config.dropout > 0 and config.layers == 1:
        report.warn("--dropout acts between LSTM layers and has no effect with --layers 1; use "
                    "--embedding-dropout, or --layers 2 or more.")
    report.say(f"runtime: {runtime.device}, {runtime.precision}, {runtime.threads} thread(s)"
               + (f", {runtime.world_size} processes" if runtime.distributed else ""))


def write_record(out: Path, tokenizer, record: dict, saved: dict | None, config: Config, runtime: Runtime) -> dict:
    """Write tokenizer.json and config.json for a new run; a resumed run keeps its own with the new settings."""
    if saved is not None:
        record = {**saved, "settings": config.to_dict()}
    elif runtime.is_main:
        checkpoint.atomic_write(out / checkpoint.TOKENIZER, tokenizer.to_str())
    if runtime.is_main:
        checkpoint.write_json(out / checkpoint.CONFIG, record)
    return record


def build_model(data: PreparedData, config: Config, runtime: Runtime, report: Reporter, *, resume: bool
                ) -> LSTMClassifier:
    """A new classifier, seeded, with its starting weights (--embeddings, --init-from) unless resuming."""
    torch.manual_seed(config.seed)
    model = LSTMClassifier(config, data.tokenizer.get_vocab_size(), len(data.labels.names)).to(runtime.device)
    report.say(f"model: {describe_model(config)}, {count_parameters(model):,} parameters, "
               f"{len(data.labels.names)} classes ({', '.join(data.labels.names)})")
    if config.embeddings and not resume:
        copied = load_vectors(config.embeddings, data.tokenizer.get_vocab(), model.embedding)
        report.say(f"embeddings: {copied:,} of {data.tokenizer.get_vocab_size():,} tokens start from "
                   f"{config.embeddings}")
    if config.init_from and not resume:
        report.say(f"init: {lm.start_from(model, config.init_from, data.tokenizer.get_vocab())}")
    model.embedding.weight.requires_grad_(not config.freeze_embeddings)
    return model


@dataclass
class LabelledRows:
    """What a classifier trains on: `rows` of `tokens` (a StoredTokens or tokenized.Joined), each row's
    class in `classes`."""
    tokens: object
    classes: np.ndarray
    rows: np.ndarray


def labelled_rows(data: PreparedData, config: Config, runtime: Runtime) -> LabelledRows:
    """The train split, or its seeded class-balanced subset with --max-train-samples."""
    rows = np.arange(len(data.train))
    if config.max_train_samples:
        rows = balanced_subset(data.train_classes, -(-config.max_train_samples // runtime.world_size), config.seed)
    return LabelledRows(data.train.encoded, data.train_classes, rows)


def classification_loss(config: Config, classes: np.ndarray, num_classes: int, runtime: Runtime):
    """Cross-entropy against each row's class, weighted by class with --class-weights auto, and against
    targets spread onto the neighbouring classes with --ordinal-smoothing."""
    weight = soft_targets = None
    if config.class_weights == "auto":
        counts = distributed.sum_array(np.bincount(classes, minlength=num_classes), runtime)
        weight = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32,
                              device=runtime.device)
    if config.ordinal_smoothing:
        neighbours = torch.diag(torch.ones(num_classes - 1), 1) + torch.diag(torch.ones(num_classes - 1), -1)
        soft_targets = (1 - config.ordinal_smoothing) * torch.eye(num_classes) \
            + config.ordinal_smoothing * neighbours / neighbours.sum(dim=1, keepdim=True)
        soft_targets = soft_targets.to(runtime.device)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets if soft_targets is None else soft_targets[targets.long()],
                               weight=weight)

    return loss


def classifier_objective(model: LSTMClassifier, training: LabelledRows, data: PreparedData, config: Config,
                         runtime: Runtime) -> loop.Objective:
    """Cross-entropy on the labelled rows, validated by accuracy on the validation split."""
    rows = training.rows
    lengths, classes = training.tokens.lengths[rows], training.classes[rows]
    criterion = classification_loss(config, classes, len(data.labels.names), runtime)
    # Every rank takes the same number of steps per epoch, or DDP's all-reduce would wait forever.
    batches_per_epoch = distributed.max_int(-(-len(rows) // config.batch_size), runtime)

    def plan(epoch: int) -> list:
        return [rows[batch] for batch in epoch_plan(lengths, config.batch_size, config.bucket_size, config.seed,
                                                    epoch, batches_per_epoch)]

    def make_batch(batch_rows: np.ndarray) -> loop.Batch:
        # Under torchrun a rank with fewer rows can get an empty batch: it steps on a stand-in with weight
        # 0, so the all-reduce still meets every rank and no example counts twice.
        weight = 1.0 if len(batch_rows) else 0.0
        batch_rows = batch_rows if len(batch_rows) else np.zeros(1, dtype=np.int64)
        ids, batch_lengths = training.tokens.batch(batch_rows)
        return loop.Batch((ids, batch_lengths, torch.from_numpy(training.classes[batch_rows])), weight,
                          int(batch_lengths.sum()))

    def loss(trained, tensors):
        ids, lengths, targets = tensors
        logits = trained(ids, lengths)
        value = criterion(logits, targets)
        return value, dict(loss=value.item() * len(targets), correct=int((logits.argmax(1) == targets).sum()),
                           seen=len(targets))

    def progress(running: dict) -> tuple[float, str]:
        seen = max(running.get("seen", 0), 1)
        train_loss = running.get("loss", 0.0) / seen
        return train_loss, f"loss {train_loss:.4f} acc {running.get('correct', 0) / seen:.3f}"

    def validate(kept) -> loop.Validation:
        result = split_metrics(kept, data.validation.encoded, data.validation_classes, data.labels, config, runtime)
        return loop.Validation(result["accuracy"], result,
                               dict(val_loss=result.get("loss"), val_accuracy=result["accuracy"],
                                    val_macro_f1=result["macro_f1"]),
                               f"validation accuracy {result['accuracy']:.4f} macro-F1 {result['macro_f1']:.4f}")

    adversary = regularize.adversary(config, model, runtime)

    def adversarial_loss(trained, tensors):
        return adversary.loss(trained, *tensors, criterion)

    return loop.Objective(model, batches_per_epoch, plan, make_batch, loss, progress, validate,
                          second_loss=adversarial_loss if adversary else None)


def warn_if_nothing_learned(validation: dict, config: Config, report: Reporter) -> None:
    """Say so when the kept weights score no better on validation than naming its most common class for every
    text: the run ended with a model that has learned nothing, though it finished without an error."""
    if not no_better_than_majority(validation):
        return
    majority = validation["majority"]
    # Seen in tune: a 2-layer BiLSTM with mean pooling and --adversarial-epsilon 5 stayed at 0.500 on Rotten
    # Tomatoes, where --adversarial none learned (docs/experiments.md, Tuning).
    push = (f", a smaller --adversarial-epsilon (now {config.adversarial_epsilon:g}) or --adversarial none"
            if config.adversarial != "none" else "")
    report.warn(f"validation accuracy {validation['accuracy']:.4f} is no better than answering {majority['label']!r} "
                f"for every text ({majority['accuracy']:.4f}): the model has not learned to tell the classes apart; "
                f"try a lower --lr (now {config.lr:g}){push}, or more --epochs.")


def split_metrics(model, encoded, class_ids: np.ndarray, labels: Labels, config: Config, runtime: Runtime) -> dict:
    """Metrics of `model` on one tokenized split, summed over every rank's share."""
    matrix, loss = confusion(model, encoded, class_ids, len(labels.names), eval_batch_size(config), runtime)
    total = distributed.sum_array(np.append(matrix.ravel(), loss), runtime)
    return metrics(total[:-1].reshape(matrix.shape), labels.names, float(total[-1]))


# -- data ---------------------------------------------------------------------------------------------

@dataclass
class TrainingSource:
    """The opened dataset, the splits chosen from it, and its text and label columns."""
    source: Source
    splits: SplitChoice
    text_column: str
    label_column: str
    warnings: list[str]  # what the user should know about these choices
    unlabeled: object = None  # --unlabeled sources besides the dataset itself (pretrain.TextSources)


def open_training_source(config: Config) -> TrainingSource:
    source = open_source(config.dataset, config.dataset_config)
    splits = choose_splits(source, config.train_split, config.eval_split)
    columns = pick_columns(source.split(splits.train), source.describe(splits.train), config.text_column,
                           config.label_column)
    return TrainingSource(source, splits, columns.text, columns.label,
                          columns.notes + ([splits.warning] if splits.warning else []),
                          selftrain.open_pool(config, source, splits.test) if config.unlabeled else None)


@dataclass
class PreparedData:
    tokenizer: object
    train: tokenized.TokenizedSplit
    validation: tokenized.TokenizedSplit
    test: tokenized.TokenizedSplit | None
    labels: Labels
    train_classes: np.ndarray
    validation_classes: np.ndarray
    test_classes: np.ndarray | None
    record: dict


def prepare_data(opened: TrainingSource, config: Config, runtime: Runtime, report: Reporter, out: Path,
                 saved: dict | None, cache_dir: Path | None = None) -> PreparedData:
    """Get a tokenizer, tokenize each split once into the run's cache, settle the labels."""
    source, splits = opened.source, opened.splits
    text_column, label_column = opened.text_column, opened.label_column
    train_stream = source.split(splits.train)
    report.say(f"data: {config.dataset}: {splits.describe(config.val_fraction)}; columns "
               f"{text_column!r} -> {label_column!r}")
    for warning in opened.warnings:
        report.warn(warning)

    def rows(split: str | None, holdout_side: bool | None, counts: RowCounts):
        name = split or splits.train
        holdout = (config.val_fraction, holdout_side) if holdout_side is not None else None
        stream = distributed.shard(source.split(name), runtime)
        return read_rows(stream, source.describe(name), text_column, label_column, strict=config.strict,
                         counts=counts, holdout=holdout)

    train_holdout = False if splits.validation is None else None
    tokenizer = settle_tokenizer(config, runtime, report, out, saved, repr(splits.train), lambda: texts_only(read_rows(
        source.split(splits.train), source.describe(splits.train), text_column, label_column, strict=config.strict,
        holdout=(config.val_fraction, False) if train_holdout is False else None)),
        more_texts=(lambda: texts_only(opened.unlabeled.rows(config, runtime, held_out=None, shard=False)))
        if opened.unlabeled and opened.unlabeled.streams else None)

    fingerprint = source.fingerprint
    if saved is not None and saved.get("data", {}).get("fingerprint") != fingerprint:
        raise UserError(f"the data in {config.dataset} changed since this run started: resume with the same "
                        "data, or start a new run with --overwrite.")

    def tokenize(role: str, split: str | None, holdout_side: bool | None):
        counts = RowCounts()
        key = dict(fingerprint=fingerprint, split=split, holdout=holdout_side, val_fraction=config.val_fraction,
                   columns=[text_column, label_column], strict=config.strict)
        return tokenize_split(out, role, key, rows(split, holdout_side, counts), counts, tokenizer, config, runtime,
                              report, cache_dir=cache_dir)

    train = tokenize("train", splits.train, train_holdout)
    validation = tokenize("validation", splits.validation, True if splits.validation is None else None)
    test = (validation if splits.validates_on_test  # read and tokenized once, as both
            else tokenize("test", splits.test, None) if splits.test else None)
    parts = {name: part for name, part in (("train", train), ("validation", validation), ("test", test))
             if part is not None}
    rows_per_split = count_rows(parts, config, runtime)
    labels = settle_labels(list(parts.values()), saved, class_label_names(train_stream, label_column), config,
                           runtime)
    lookup = labels.lookup()
    train_classes = train.class_ids(lookup, "train")
    truncated = report_training_data(train, train_classes, labels, rows_per_split["train"], config, runtime, report)
    record = checkpoint.run_record(config, labels, tokenizer.get_vocab_size(), dict(
        fingerprint=fingerprint, text_column=text_column, label_column=label_column, rows=rows_per_split,
        truncated_train_texts=truncated, splits=dict(train=splits.train, validation=splits.validation or
                                                     f"{HOLDOUT}: {config.val_fraction:g} of {splits.train}",
                                                     test=splits.test)))
    return PreparedData(tokenizer, train, validation, test, labels, train_classes,
                        validation.class_ids(lookup, "validation"),
                        test.class_ids(lookup, "test") if test is not None else None, record)


def count_rows(parts: dict[str, tokenized.TokenizedSplit], config: Config, runtime: Runtime) -> dict:
    """Rows per split over every process; an empty split stops the run."""
    counts = {name: int(distributed.sum_array(np.array([len(part)]), runtime)[0]) for name, part in parts.items()}
    for name, count in counts.items():
        if count == 0:
            raise UserError(f"the {name} split of {config.dataset} has no usable rows: check the data and the "
                            "--text-column / --label-column.")
    return counts


def settle_labels(parts: list[tokenized.TokenizedSplit], saved: dict | None, class_names, config: Config,
                  runtime: Runtime) -> Labels:
    """The resumed run's labels, else those that occur in any split (on any process), in the dataset's order."""
    if saved is not None:
        return Labels(saved["labels"]["names"], saved["labels"]["keys"])
    keys = [k for texts in distributed.gather_texts(json.dumps([k for s in parts for k in s.label_keys]), runtime)
            for k in json.loads(texts)]
    return Labels.from_keys(keys, class_names, config.label_names)


def report_training_data(train: tokenized.TokenizedSplit, train_classes: np.ndarray, labels: Labels, rows: int,
                         config: Config, runtime: Runtime, report: Reporter) -> int:
    """Warn about classes the training data lacks, say how many texts --max-length cut; returns that count."""
    present = distributed.sum_array(np.bincount(train_classes, minlength=len(labels.names)), runtime)
    for name, count in zip(labels.names, present):
        if count == 0:
            report.warn(f"class {name!r} never occurs in the training data: the model cannot learn it.")
    truncated = int(distributed.sum_array(np.array([train.encoded.truncated]), runtime)[0])
    if truncated:
        report.say(f"truncation: {truncated:,} of {rows:,} training texts ({truncated / rows:.1%}) are longer "
                   f"than --max-length {config.max_length} and were cut.")
    return truncated


def settle_tokenizer(config: Config, runtime: Runtime, report: Reporter, out: Path, saved: dict | None,
                     trained_on: str, training_texts, more_texts=None) -> object:
    """The run's tokenizer: its own when resuming, else trained on `training_texts()` (on the first process,
    then shared), else the tokenizer.json (or Hub tokenizer) that --tokenizer names. A word-level vocabulary
    with room left takes the most frequent words of `more_texts()` (unlabelled text) too (subword tokenizers
    already spell words they have not seen), and every word of the word vectors that --init-from names."""
    if saved is not None:
        return tokenizer_from_json((out / checkpoint.TOKENIZER).read_text(encoding="utf-8"),
                                   str(out / checkpoint.TOKENIZER))
    if config.tokenizer not in TOKENIZER_KINDS:
        tokenizer = load_tokenizer(config.tokenizer)
        report.say(f"tokenizer: {config.tokenizer}, {tokenizer.get_vocab_size():,} tokens")
        return tokenizer
    text = None
    if runtime.is_main:
        trained = train_tokenizer(training_texts(), config.tokenizer, config.vocab_size, config.min_frequency,
                                  config.lowercase, warn=report.warn)
        if more_texts is not None and config.tokenizer == "wordlevel" and trained.get_vocab_size() < config.vocab_size:
            trained = extend_vocabulary(trained, train_tokenizer(more_texts(), config.tokenizer, config.vocab_size,
                                                                 config.min_frequency, config.lowercase),
                                        config.vocab_size)
            trained_on += " and the unlabelled text's most frequent other words"
        if config.init_from and lm.read_record(Path(config.init_from))["task"] == wordvectors.TASK:
            trained = wordvectors.vocabulary_with(trained, config.init_from)
            trained_on += f" and every word of the word vectors in {config.init_from}"
        text = trained.to_str()
    tokenizer = tokenizer_from_json(distributed.broadcast_text(text, runtime), "the trained tokenizer")
    report.say(f"tokenizer: {config.tokenizer}, {tokenizer.get_vocab_size():,} tokens, trained on {trained_on}")
    return tokenizer


def tokenize_split(out: Path, role: str, key: dict, chunks, counts: RowCounts, tokenizer, config: Config,
                   runtime: Runtime, report: Reporter, max_length: int | None = None,
                   cache_dir: Path | None = None) -> tokenized.TokenizedSplit:
    """Stream `chunks` through the tokenizer into the run's cache (reused when `key` matches), with a progress
    bar and a warning about skipped rows. A shared `cache_dir` holds one folder per key, so runs that
    differ only in --max-length keep each other's splits."""
    max_length = max_length or config.max_length
    key = dict(key, tokenizer=checkpoint.sha256(tokenizer.to_str().encode()), max_length=max_length,
               truncation=config.truncation, rank=runtime.rank, world_size=runtime.world_size)
    name = role if not runtime.distributed else f"{role}-rank{runtime.rank}"
    folder = out / checkpoint.CACHE / name
    if cache_dir is not None:
        folder = Path(cache_dir) / f"{name}-{checkpoint.sha256(json.dumps(key, sort_keys=True).encode())[:16]}"
    with report.task(f"tokenizing {role}") as advance:
        result = tokenized.build(folder, key, chunks, tokenizer, max_length, config.truncation, on_chunk=advance)
    if counts.skipped:
        report.warn(f"{role}: skipped {counts.skipped:,} rows ({counts.missing_text} without text, "
                    f"{counts.missing_label} without label, {counts.empty_text} with empty text); "
                    "pass --strict to stop on such rows instead.")
    return result


# -- small pieces of the loop --------------------------------------------------------------------------

def describe_model(config: Config) -> str:
    kind = "BiLSTM" if config.bidirectional else "LSTM"
    return (f"{config.layers}-layer {kind}-{config.hidden_size}, embeddings {config.embed_dim}, "
            f"{config.pooling} pooling")


def eval_batch_size(config: Config) -> int:
    return max(256, config.batch_size)
