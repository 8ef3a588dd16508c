"""Training, top to bottom.

    1. runtime and run directory      4. tokenized splits and labels   7. final metrics
    2. data: splits and columns       5. model and optimizer
    3. tokenizer                      6. the loop: steps, evaluations, best weights, resumable states

`train(config)` is what `lstmcli train` calls; tests call it directly.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import checkpoint, distributed, regularize, tokenized
from .batching import epoch_plan, prefetch, to_device
from .config import TOKENIZER_KINDS, Config, differences, from_mapping, merge
from .data import HOLDOUT, LABEL_COLUMNS, TEXT_COLUMNS, Labels, RowCounts, Source, SplitChoice, choose_splits, \
    class_label_names, column_names, open_source, pick_column, read_rows, texts_only
from .errors import Interrupted, UserError
from .evaluate import confusion, metrics
from .model import LSTMClassifier, count_parameters
from .runtime import Runtime, setup
from .terminal import Reporter, Throughput, human
from .tokenizer import load_tokenizer, tokenizer_from_json, train_tokenizer
from .vectors import load_vectors

SAVE_INTERVAL_SECONDS = 600  # a resumable state at least this often, besides every evaluation


def settings_for(recipe: dict, command_line: dict, resume: bool) -> Config:
    """The run's settings: defaults < recipe file < command line; on --resume the saved run's settings
    take the place of the defaults, and changing any that shape the model or data is refused."""
    wanted = merge(recipe, command_line)
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


def train(config: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    """Train a classifier as `config` says; returns the final metrics (also written to metrics.json)."""
    # 1. runtime and run directory ------------------------------------------------------------------
    config.validate()
    runtime = setup(config.device, config.precision, config.threads)
    distributed.start(runtime)
    report = Reporter(quiet or not runtime.is_main)
    source = distributed.together(runtime, open_training_source, config)  # bad data fails before any write
    out = Path(config.output_dir)
    distributed.together(runtime, lambda: runtime.is_main and checkpoint.prepare_output_dir(
        out, overwrite=overwrite, resume=resume))
    if config.dropout > 0 and config.layers == 1:
        report.warn("--dropout acts between LSTM layers and has no effect with --layers 1; use "
                    "--embedding-dropout, or --layers 2 or more.")
    report.say(f"runtime: {runtime.device}, {runtime.precision}, {runtime.threads} thread(s)"
               + (f", {runtime.world_size} processes" if runtime.distributed else ""))

    # 2-4. data, tokenizer, tokenized splits and labels -----------------------------------------------
    saved = checkpoint.read_json(out / checkpoint.CONFIG, "") if resume else None
    data = prepare_data(source, config, runtime, report, out, saved)
    labels, record = data.labels, data.record
    if runtime.is_main and not resume:
        checkpoint.atomic_write(out / checkpoint.TOKENIZER, data.tokenizer.to_str())
        checkpoint.write_json(out / checkpoint.CONFIG, record)
    if resume:
        record = {**saved, "settings": config.to_dict()}
        if runtime.is_main:
            checkpoint.write_json(out / checkpoint.CONFIG, record)

    # 5. model and optimizer ------------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    model = LSTMClassifier(config, data.tokenizer.get_vocab_size(), len(labels.names)).to(runtime.device)
    report.say(f"model: {describe_model(config)}, {count_parameters(model):,} parameters, "
               f"{len(labels.names)} classes ({', '.join(labels.names)})")
    if config.embeddings and not resume:
        copied = load_vectors(config.embeddings, data.tokenizer.get_vocab(), model.embedding)
        report.say(f"embeddings: {copied:,} of {data.tokenizer.get_vocab_size():,} tokens start from "
                   f"{config.embeddings}")
    model.embedding.weight.requires_grad_(not config.freeze_embeddings)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    # With --ema, an exponential moving average of the weights is what gets validated and kept.
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema)) if config.ema else None
    kept = averaged.module if averaged else model
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.autocast_dtype == torch.float16)
    class_weights = None
    if config.class_weights == "auto":
        counts = distributed.sum_array(np.bincount(data.train_classes, minlength=len(labels.names)), runtime)
        class_weights = torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32,
                                     device=runtime.device)
    trained = distributed.wrap(model, runtime)
    adversary = regularize.adversary(config, model, runtime)

    # Every rank takes the same number of steps per epoch, or DDP's all-reduce would wait forever.
    batches_per_epoch = distributed.max_int(-(-len(data.train) // config.batch_size), runtime)
    total_steps = config.epochs * batches_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    warmup_steps = int(config.warmup * total_steps)
    if runtime.distributed:
        report.say(f"batch: {config.batch_size} per process, {config.batch_size * runtime.world_size} "
                   "in all")

    # 6. the loop -------------------------------------------------------------------------------------
    # Where training stands; saved in every resumable state. `running` sums the current epoch's loss and
    # accuracy, so that a resumed epoch reports the same figures as an uninterrupted one.
    position = dict(epoch=0, batch=0, step=0, best=None, evals_since_best=0, elapsed=0.0, log_bytes=0,
                    running=dict(loss=0.0, correct=0, seen=0), world_size=runtime.world_size)
    if resume:
        position = restore(out, model, optimizer, scaler, averaged, runtime)
        if position.get("world_size", 1) != runtime.world_size:
            raise UserError(f"{out} was saved by {position.get('world_size', 1)} process(es) and each one's place "
                            f"in the data depends on that: resume it with {position.get('world_size', 1)}, not "
                            f"{runtime.world_size}.")
        report.say(f"resumed at epoch {position['epoch'] + 1}, batch {position['batch']}, step "
                   f"{position['step']}")
    log_path = out / checkpoint.LOG
    if runtime.is_main:
        with open(log_path, "a+b") as log:  # drop evaluations logged after the state we resume from
            log.truncate(position["log_bytes"])

    def validate() -> dict:
        matrix, loss = confusion(kept, data.validation.encoded, data.validation_classes, len(labels.names),
                                 eval_batch_size(config), runtime)
        total = distributed.sum_array(np.append(matrix.ravel(), loss), runtime)
        return metrics(total[:-1].reshape(matrix.shape), labels.names, float(total[-1]))

    def elapsed() -> float:
        return round(resumed_elapsed + time.monotonic() - started, 2)

    def evaluate_and_save(epoch_number: int, train_loss: float) -> bool:
        """Validate, keep the weights if best, log, save a resumable state; True when patience runs out."""
        tokens_per_second = round(speed.rate())  # of the training steps alone, before validation starts
        validation_started = time.monotonic()
        result = validate()
        validation_seconds = round(time.monotonic() - validation_started, 2)
        best = position["best"]
        improved = best is None or result["accuracy"] > best["accuracy"]
        if improved:
            position["best"] = dict(accuracy=result["accuracy"], macro_f1=result["macro_f1"],
                                    step=position["step"], epoch=epoch_number)
            position["evals_since_best"] = 0
            if runtime.is_main:
                checkpoint.save_weights(out, record, kept.state_dict())
        else:
            position["evals_since_best"] += 1
        report.say(f"epoch {epoch_number} step {position['step']}: train loss {train_loss:.4f} | validation "
                   f"accuracy {result['accuracy']:.4f} macro-F1 {result['macro_f1']:.4f}"
                   + (" (best)" if improved else ""))
        save(dict(epoch=epoch_number, step=position["step"], train_loss=train_loss, lr=current_lr(optimizer),
                  val_loss=result.get("loss"), val_accuracy=result["accuracy"], val_macro_f1=result["macro_f1"],
                  best=improved, elapsed=elapsed(), eval_seconds=validation_seconds,
                  train_tokens_per_second=tokens_per_second))
        return patience_exhausted(position, config)

    def save(log_entry: dict | None = None) -> None:
        nonlocal last_save
        if runtime.is_main:
            if log_entry is not None:
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(log_entry) + "\n")
            position.update(elapsed=elapsed(), log_bytes=log_path.stat().st_size)
            save_state(out, position, model, optimizer, scaler, averaged)
        distributed.barrier(runtime)
        last_save = time.monotonic()

    def make_batch(rows: np.ndarray):
        # Under torchrun a rank with fewer rows can get an empty batch: it steps on a stand-in with weight
        # 0, so the all-reduce still meets every rank and no example counts twice.
        weight = 1.0 if len(rows) else 0.0
        rows = rows if len(rows) else np.zeros(1, dtype=np.int64)
        ids, lengths = data.train.encoded.batch(rows)
        return ids, lengths, torch.from_numpy(data.train_classes[rows]), weight

    stop = StopSignal()
    resumed_elapsed, started = position["elapsed"], time.monotonic()
    last_save = started
    evaluated_at = position["step"] if resume else None
    finished = position["step"] >= total_steps or patience_exhausted(position, config)
    train_loss, speed = float("nan"), Throughput()
    with stop, distributed.peers_guard(runtime, out):
        while not finished and position["epoch"] < config.epochs:
            epoch = position["epoch"]
            plan = epoch_plan(data.train.encoded.lengths, config.batch_size, config.bucket_size, config.seed,
                              epoch, batches_per_epoch)
            trained.train()
            running, speed = position["running"], Throughput()
            with report.task(f"epoch {epoch + 1}/{config.epochs}", total=len(plan)) as advance:
                advance(position["batch"])
                batches = prefetch(make_batch, plan[position["batch"]:])
                for ids, lengths, targets, weight in batches:
                    speed.add(int(lengths.sum()) if weight else 0)
                    ids, lengths, targets = to_device((ids, lengths, targets), runtime.device)
                    set_lr(optimizer, learning_rate(position["step"], total_steps, warmup_steps, config))
                    with runtime.autocast():
                        logits = trained(ids, lengths)
                    loss = F.cross_entropy(logits.float(), targets, weight=class_weights)
                    loss_value = loss.item()
                    if not math.isfinite(loss_value):
                        raise UserError(f"the loss became {loss_value} at step {position['step'] + 1}: training "
                                        f"stopped and the last good state is kept; lower --lr (now {config.lr:g}) "
                                        "or use --precision fp32.")
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss * weight).backward()
                    if adversary:
                        scaler.scale(adversary.loss(trained, ids, lengths, targets, class_weights) * weight).backward()
                    if config.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if averaged:
                        averaged.update_parameters(model)
                    position["step"] += 1
                    position["batch"] += 1
                    if weight:
                        running["loss"] += loss_value * len(targets)
                        running["correct"] += int((logits.argmax(1) == targets).sum())
                        running["seen"] += len(targets)
                    train_loss = running["loss"] / max(running["seen"], 1)
                    advance(1, f"loss {train_loss:.4f} acc {running['correct'] / max(running['seen'], 1):.3f} "
                               f"{human(speed.rate())} tok/s")
                    finished = position["step"] >= total_steps
                    if config.eval_every and position["step"] % config.eval_every == 0 \
                            and position["batch"] < len(plan):
                        evaluated_at = position["step"]
                        finished = evaluate_and_save(epoch + 1, train_loss) or finished
                    elif stop.requested or save_due(config, position["step"], last_save):
                        save()
                    if stop.requested:
                        raise Interrupted(f"stopped by {stop.requested} at step {position['step']}; the state is "
                                          f"saved: continue with lstmcli train --resume --output-dir {out}")
                    if finished:
                        break
            if position["batch"] < len(plan):
                break  # stopped inside the epoch (--max-steps or patience)
            position.update(epoch=epoch + 1, batch=0, running=dict(loss=0.0, correct=0, seen=0))
            evaluated_at = position["step"]
            finished = evaluate_and_save(epoch + 1, train_loss) or finished
        if evaluated_at != position["step"] or position["best"] is None:  # the same on every rank
            evaluate_and_save(position["epoch"] + 1, train_loss)

    # 7. final metrics, with the best weights ------------------------------------------------------------
    distributed.barrier(runtime)
    best = checkpoint.read_tensors(out / checkpoint.WEIGHTS, checkpoint.read_json(
        out / checkpoint.CONFIG, "")["weights"].get(checkpoint.WEIGHTS))
    kept.load_state_dict(best)
    final = dict(validation=validate(), test=None, best=position["best"], splits=record["data"]["splits"],
                 train=dict(rows=record["data"]["rows"]["train"], steps=position["step"], seconds=elapsed()))
    if data.test is not None:
        matrix, loss = confusion(kept, data.test.encoded, data.test_classes, len(labels.names),
                                 eval_batch_size(config), runtime)
        total = distributed.sum_array(np.append(matrix.ravel(), loss), runtime)
        final["test"] = metrics(total[:-1].reshape(matrix.shape), labels.names, float(total[-1]))
    if runtime.is_main:
        checkpoint.write_json(out / checkpoint.METRICS, final)
        checkpoint.remove_cache(out)
        summary = f"validation accuracy {final['validation']['accuracy']:.4f}"
        if final["test"]:
            summary += f", test accuracy {final['test']['accuracy']:.4f}"
        report.say(f"done in {final['train']['seconds']:.0f}s: {summary}; best weights in {out}")
    distributed.barrier(runtime)
    return final


# -- data ---------------------------------------------------------------------------------------------

@dataclass
class TrainingSource:
    """The opened dataset, the splits chosen from it, and its text and label columns."""
    source: Source
    splits: SplitChoice
    text_column: str
    label_column: str


def open_training_source(config: Config) -> TrainingSource:
    source = open_source(config.dataset, config.dataset_config)
    splits = choose_splits(source, config.train_split, config.eval_split)
    columns = column_names(source.split(splits.train), source.describe(splits.train))
    return TrainingSource(source, splits, pick_column(columns, config.text_column, TEXT_COLUMNS, "text"),
                          pick_column(columns, config.label_column, LABEL_COLUMNS, "label"))


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
                 saved: dict | None) -> PreparedData:
    """Get a tokenizer, tokenize each split once into the run's cache, settle the labels."""
    source, splits = opened.source, opened.splits
    text_column, label_column = opened.text_column, opened.label_column
    train_stream = source.split(splits.train)
    report.say(f"data: {config.dataset}: {splits.describe(config.val_fraction)}; columns "
               f"{text_column!r} -> {label_column!r}")

    def rows(split: str | None, holdout_side: bool | None, counts: RowCounts):
        name = split or splits.train
        holdout = (config.val_fraction, holdout_side) if holdout_side is not None else None
        stream = distributed.shard(source.split(name), runtime)
        return read_rows(stream, source.describe(name), text_column, label_column, strict=config.strict,
                         counts=counts, holdout=holdout)

    train_holdout = False if splits.validation is None else None
    if saved is not None:
        tokenizer = tokenizer_from_json((out / checkpoint.TOKENIZER).read_text(encoding="utf-8"),
                                        str(out / checkpoint.TOKENIZER))
    elif config.tokenizer in TOKENIZER_KINDS:
        text = None
        if runtime.is_main:
            tokenizer = train_tokenizer(texts_only(read_rows(
                source.split(splits.train), source.describe(splits.train), text_column, label_column,
                strict=config.strict, holdout=(config.val_fraction, False) if train_holdout is False else None)),
                config.tokenizer, config.vocab_size, config.min_frequency, config.lowercase)
            text = tokenizer.to_str()
        tokenizer = tokenizer_from_json(distributed.broadcast_text(text, runtime), "the trained tokenizer")
        report.say(f"tokenizer: {config.tokenizer}, {tokenizer.get_vocab_size():,} tokens, trained on "
                   f"{splits.train!r}")
    else:
        tokenizer = load_tokenizer(config.tokenizer)
        report.say(f"tokenizer: {config.tokenizer}, {tokenizer.get_vocab_size():,} tokens")

    tokenizer_hash = checkpoint.sha256(tokenizer.to_str().encode())
    fingerprint = source.fingerprint
    if saved is not None and saved.get("data", {}).get("fingerprint") != fingerprint:
        raise UserError(f"the data in {config.dataset} changed since this run started: resume with the same "
                        "data, or start a new run with --overwrite.")

    def tokenize(role: str, split: str | None, holdout_side: bool | None):
        counts = RowCounts()
        key = dict(fingerprint=fingerprint, split=split, holdout=holdout_side, val_fraction=config.val_fraction,
                   columns=[text_column, label_column], tokenizer=tokenizer_hash, max_length=config.max_length,
                   truncation=config.truncation, strict=config.strict, rank=runtime.rank,
                   world_size=runtime.world_size)
        folder = out / checkpoint.CACHE / (role if not runtime.distributed else f"{role}-rank{runtime.rank}")
        with report.task(f"tokenizing {role}") as advance:
            result = tokenized.build(folder, key, rows(split, holdout_side, counts), tokenizer, config.max_length,
                                     config.truncation, on_chunk=advance)
        if counts.skipped:
            report.warn(f"{role}: skipped {counts.skipped:,} rows ({counts.missing_text} without text, "
                        f"{counts.missing_label} without label, {counts.empty_text} with empty text); "
                        "pass --strict to stop on such rows instead.")
        return result

    train = tokenize("train", splits.train, train_holdout)
    validation = tokenize("validation", splits.validation, True if splits.validation is None else None)
    test = tokenize("test", splits.test, None) if splits.test else None
    parts = [s for s in (train, validation, test) if s is not None]
    rows_per_split = {name: int(distributed.sum_array(np.array([len(s)]), runtime)[0])
                      for name, s in (("train", train), ("validation", validation), ("test", test)) if s is not None}
    for name, count in rows_per_split.items():
        if count == 0:
            raise UserError(f"the {name} split of {config.dataset} has no usable rows: check the data and the "
                            "--text-column / --label-column.")

    if saved is not None:
        labels = Labels(saved["labels"]["names"], saved["labels"]["keys"])
    else:
        keys = [k for texts in distributed.gather_texts(json.dumps([k for s in parts for k in s.label_keys]), runtime)
                for k in json.loads(texts)]
        labels = Labels.from_keys(keys, class_label_names(train_stream, label_column), config.label_names)
    lookup = labels.lookup()
    train_classes = train.class_ids(lookup, "train")
    present = distributed.sum_array(np.bincount(train_classes, minlength=len(labels.names)), runtime)
    for name, count in zip(labels.names, present):
        if count == 0:
            report.warn(f"class {name!r} never occurs in the training data: the model cannot learn it.")
    truncated = int(distributed.sum_array(np.array([train.encoded.truncated]), runtime)[0])
    if truncated:
        report.say(f"truncation: {truncated:,} of {rows_per_split['train']:,} training texts "
                   f"({truncated / rows_per_split['train']:.1%}) are longer than --max-length {config.max_length} "
                   "and were cut.")
    record = checkpoint.run_record(config, labels, tokenizer.get_vocab_size(), dict(
        fingerprint=fingerprint, text_column=text_column, label_column=label_column, rows=rows_per_split,
        truncated_train_texts=truncated, splits=dict(train=splits.train, validation=splits.validation or
                                                     f"{HOLDOUT}: {config.val_fraction:g} of {splits.train}",
                                                     test=splits.test)))
    return PreparedData(tokenizer, train, validation, test, labels, train_classes,
                        validation.class_ids(lookup, "validation"),
                        test.class_ids(lookup, "test") if test is not None else None, record)


# -- small pieces of the loop --------------------------------------------------------------------------

def describe_model(config: Config) -> str:
    kind = "BiLSTM" if config.bidirectional else "LSTM"
    return (f"{config.layers}-layer {kind}-{config.hidden_size}, embeddings {config.embed_dim}, "
            f"{config.pooling} pooling")


def eval_batch_size(config: Config) -> int:
    return max(256, config.batch_size)


def learning_rate(step: int, total: int, warmup: int, config: Config) -> float:
    """Linear warm-up to --lr, then the --schedule decay: a pure function of the step, so resuming is exact."""
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.schedule == "constant":
        return config.lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (1 - progress)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return optimizer.param_groups[0]["lr"]


def patience_exhausted(position: dict, config: Config) -> bool:
    return bool(config.patience) and position["evals_since_best"] >= config.patience


def save_due(config: Config, step: int, last_save: float) -> bool:
    if config.save_every and step % config.save_every == 0:
        return True
    return time.monotonic() - last_save >= SAVE_INTERVAL_SECONDS


class StopSignal:
    """Turns the first Ctrl-C or SIGTERM into a request to save and stop after the current step."""

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- resumable state ----------------------------------------------------------------------------------

def save_state(out: Path, position: dict, model, optimizer, scaler, averaged) -> None:
    optimizer_state = optimizer.state_dict()
    moments = {f"{index}.{name}": value for index, state in optimizer_state["state"].items()
               for name, value in state.items()}
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors = dict(model=model.state_dict(), optimizer=moments, rng=rng)
    if averaged:
        tensors["averaged"] = averaged.state_dict()
    checkpoint.save_state(out, dict(position, optimizer_groups=optimizer_state["param_groups"],
                                    scaler=scaler.state_dict() if scaler.is_enabled() else None), tensors)


def restore(out: Path, model, optimizer, scaler, averaged, runtime: Runtime) -> dict:
    position, tensors = checkpoint.load_state(out)
    checkpoint.check_state_dict(tensors["model"], model.state_dict(), out / position["state"])
    model.load_state_dict(tensors["model"])
    if averaged:
        checkpoint.check_state_dict(tensors.get("averaged", {}), averaged.state_dict(), out / position["state"])
        averaged.load_state_dict(tensors["averaged"])
    state: dict = {}
    for key, value in tensors["optimizer"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.to(runtime.device) if name != "step" else value
    groups = position.pop("optimizer_groups")
    for group in groups:
        group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise UserError(f"the saved optimizer state in {out} does not fit this model ({e}): start a new run "
                        "with --overwrite.") from None
    scaler_state = position.pop("scaler", None)
    if scaler_state and scaler.is_enabled():
        scaler.load_state_dict(scaler_state)
    torch.set_rng_state(tensors["rng"]["torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors["rng"][k] for k in sorted(tensors["rng"]) if k.startswith("cuda.")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for key in ("state", "checksums"):
        position.pop(key, None)
    return position
