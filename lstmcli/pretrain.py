"""Pretraining on unlabelled text, top to bottom: a language model (lm.py) or word vectors (wordvectors.py).

    1. runtime and run directory         3. tokenizer, trained on the pretraining text
    2. text: the dataset's train split    4. tokenized text, cut into windows of --max-length tokens
       and every --unlabeled source      5. the loop (loop.fit), validated on a held-out share of the text

The result is an ordinary run directory whose weights `lstmcli train --init-from` starts a classifier from.
`pretrain(config)` is what `lstmcli pretrain` calls; tests call it directly.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, distributed, loop, wordvectors
from .batching import epoch_plan, eval_plan
from .config import Config
from .data import RowCounts, texts_only
from .errors import UserError
from .lm import LanguageModel
from .model import count_parameters
from .runtime import Runtime
from .terminal import Reporter
from .train import announce, claim_output_dir, describe_model, eval_batch_size, settle_tokenizer, start_run, \
    tokenize_split, write_record
from .unlabeled import TextSources, open_text_sources

WHOLE_TEXT = 1_000_000  # tokens read per text: pretraining cuts long texts into windows instead of truncating


def pretrain(config: Config, *, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    """Train a language model as `config` says; returns the final figures (also written to metrics.json)."""
    with contextlib.ExitStack() as held:  # the run directory's lock, from claim_output_dir to the end
        return _pretrain(config, held, resume=resume, overwrite=overwrite, quiet=quiet)


def _pretrain(config: Config, held: contextlib.ExitStack, *, resume: bool, overwrite: bool, quiet: bool) -> dict:
    runtime, report, out = start_run(config, resume=resume, overwrite=overwrite, quiet=quiet)
    sources = distributed.together(runtime, open_text_sources, config)
    claim_output_dir(held, out, runtime, overwrite=overwrite, resume=resume)
    announce(config, runtime, report)
    for line in sources.describe(config):
        report.say(line)

    saved = checkpoint.read_json(out / checkpoint.CONFIG, "") if resume else None
    tokenizer = settle_tokenizer(config, runtime, report, out, saved, "the pretraining text",
                                 lambda: texts_only(sources.rows(config, runtime, held_out=False, shard=False)))
    if saved is not None and saved.get("data", {}).get("fingerprint") != sources.fingerprint:
        raise UserError("the pretraining text changed since this run started: resume with the same data, or "
                        "start a new run with --overwrite.")
    split, tokens = tokenize_text(sources, tokenizer, config, runtime, report, out)
    record = checkpoint.run_record(config, None, tokenizer.get_vocab_size(), dict(
        fingerprint=sources.fingerprint, sources=sources.names, text_columns=sources.columns, tokens=tokens,
        splits=dict(train=f"{1 - config.val_fraction:g} of the text", validation=f"{config.val_fraction:g} of the "
                    "text, held out by text hash")), task=config.objective)
    record = write_record(out, tokenizer, record, saved, config, runtime)

    counts = distributed.sum_array(split["train"].encoded.token_counts(tokenizer.get_vocab_size()), runtime)
    model = pretrained_model(config, tokenizer.get_vocab_size(), counts, report).to(runtime.device)
    report.say(f"text: {tokens['train']:,} tokens to train on, {tokens['validation']:,} held out; windows of "
               f"{config.max_length} tokens")
    objective = text_objective(model, split["train"].encoded.windows(config.max_length),
                               split["validation"].encoded.windows(config.max_length), config, runtime)
    outcome = loop.fit(objective, config, runtime, out, record, report, resume=resume, command="pretrain")

    validation = objective.validate(outcome.kept)
    final = dict(validation=validation.best, best=outcome.position["best"],
                 train=dict(tokens=tokens["train"], steps=outcome.position["step"], seconds=outcome.seconds))
    summary = validation.summary
    if isinstance(model, LanguageModel):
        final["unigram_perplexity"] = unigram_perplexity(
            counts, split["validation"].encoded.token_counts(tokenizer.get_vocab_size()), runtime)
        summary += f" (unigram {final['unigram_perplexity']:.1f})"
    if runtime.is_main:
        checkpoint.write_json(out / checkpoint.METRICS, final)
        checkpoint.remove_cache(out)
        report.say(f"done in {outcome.seconds:.0f}s: {summary}; start a classifier from it with lstmcli train "
                   f"--init-from {out}")
    distributed.barrier(runtime)
    return final


def tokenize_text(sources: TextSources, tokenizer, config: Config, runtime: Runtime, report: Reporter,
                  out: Path) -> tuple[dict, dict]:
    """Tokenize the text into the run's cache, whole, as the train and held-out (validation) splits; returns
    them and their token counts over every process."""
    key = dict(fingerprint=sources.fingerprint, val_fraction=config.val_fraction, columns=sources.columns)
    split = {}
    for role, held_out in (("train", False), ("validation", True)):
        counts = RowCounts()
        split[role] = tokenize_split(out, role, dict(key, held_out=held_out),
                                     sources.rows(config, runtime, held_out=held_out, counts=counts), counts,
                                     tokenizer, config, runtime, report, max_length=WHOLE_TEXT)
    tokens = {role: int(distributed.sum_array(np.array([int(s.encoded.lengths.sum())]), runtime)[0])
              for role, s in split.items()}
    if min(tokens.values()) == 0:
        raise UserError("the pretraining text has no words on one side of the held-out split: give more text, or "
                        "a larger --val-fraction.")
    return split, tokens


# -- the model and its objective --------------------------------------------------------------------------

def pretrained_model(config: Config, vocab_size: int, counts: np.ndarray, report) -> torch.nn.Module:
    """The --objective's model, seeded: a language model, or word vectors."""
    torch.manual_seed(config.seed)
    if config.objective == wordvectors.TASK:
        model = wordvectors.SkipGram(config, vocab_size, counts)
        report.say(f"model: {config.embed_dim}-dimensional word vectors of {vocab_size:,} tokens by skip-gram (each "
                   f"word predicts up to {config.window} on either side, against {config.negatives} random words), "
                   f"{count_parameters(model):,} parameters")
        return model
    model = LanguageModel(config, vocab_size, counts)
    directions = "s (forward and backward)" if config.bidirectional else ""
    report.say(f"model: {describe_model(config)} language model{directions}, adaptive softmax over "
               f"{vocab_size:,} tokens, {count_parameters(model):,} parameters")
    return model


def text_objective(model: torch.nn.Module, train, validation, config: Config, runtime) -> loop.Objective:
    """Minimise the model's loss per predicted word on the windows of text (a language model predicts every next
    word, and bidirectional every previous one; word vectors every neighbour); validated on the held-out share,
    as perplexity for a language model."""
    batches_per_epoch = distributed.max_int(-(-len(train) // config.batch_size), runtime)
    perplexity = isinstance(model, LanguageModel)

    def plan(epoch: int) -> list:
        return epoch_plan(train.lengths, config.batch_size, config.bucket_size, config.seed, epoch, batches_per_epoch)

    def make_batch(rows: np.ndarray) -> loop.Batch:
        weight = 1.0 if len(rows) else 0.0  # a stand-in batch under torchrun, as in train
        rows = rows if len(rows) else np.zeros(1, dtype=np.int64)
        ids, lengths = train.batch(rows)
        return loop.Batch((ids, lengths), weight, int(lengths.sum()))

    def loss(trained, tensors):
        total, count = trained(*tensors)
        return total / max(count, 1), dict(loss=total.item(), words=count)

    def progress(running: dict) -> tuple[float, str]:
        mean = running.get("loss", 0.0) / max(running.get("words", 0), 1)
        return mean, f"loss {mean:.3f}" + (f" ppl {math.exp(min(mean, 50)):.1f}" if perplexity else "")

    def validate(kept) -> loop.Validation:
        mean = held_out_loss(kept, validation, eval_batch_size(config), runtime)
        if not perplexity:
            return loop.Validation(-mean, dict(loss=mean), dict(val_loss=mean), f"validation loss {mean:.4f}")
        value = math.exp(min(mean, 50))
        return loop.Validation(-mean, dict(loss=mean, perplexity=value), dict(val_loss=mean, val_perplexity=value),
                               f"validation perplexity {value:.2f}")

    # A batch without rare words leaves the adaptive softmax's tail clusters unused.
    return loop.Objective(model, batches_per_epoch, plan, make_batch, loss, progress, validate,
                          skips_parameters=perplexity)


@torch.inference_mode()
def held_out_loss(model: torch.nn.Module, encoded, batch_size: int, runtime) -> float:
    """Mean negative log-likelihood per predicted word over every rank's held-out windows. Random draws (the
    word vectors' negatives) come from a fixed seed: every evaluation scores alike, and training's random
    numbers stay as they were."""
    was_training = model.training
    model.eval()
    total = np.zeros(2)
    try:
        with torch.random.fork_rng(devices=[runtime.device] if runtime.device.type == "cuda" else []):
            torch.manual_seed(0)
            for rows in eval_plan(encoded.lengths, batch_size):
                ids, lengths = encoded.batch(rows)
                with runtime.autocast():
                    loss, count = model(ids.to(runtime.device), lengths.to(runtime.device))
                total += (float(loss), count)
    finally:
        model.train(was_training)
    total = distributed.sum_array(total, runtime)
    return float(total[0] / max(total[1], 1))


def unigram_perplexity(counts: np.ndarray, held_out_counts: np.ndarray, runtime) -> float:
    """The perplexity of word frequencies alone (add-one smoothed) on the held-out text: what the model must
    beat to have learned anything about context. Counts the same words the model predicts only roughly (it
    also scores each window's first word), which is close enough for a reference figure."""
    probabilities = (counts + 1) / (counts.sum() + len(counts))
    held_out = distributed.sum_array(held_out_counts, runtime)
    return float(math.exp(-(held_out * np.log(probabilities)).sum() / max(held_out.sum(), 1)))
