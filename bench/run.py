"""make bench: lstmcli's speed on this machine, measured side by side with its ceilings and anchors.

    python bench/run.py [--quick] [--only SECTION ...]

Sections: step (training step vs a bare PyTorch loop), pipeline (stream + tokenize + batch vs raw encode_batch),
padding (padded share of IMDB batches), accuracy (time to a test accuracy, vs fastText), predict (cold start;
batch throughput in fp32, bf16 and int8), memory (peak RSS on 20k vs 2M rows), threads, precision, segments
(512-token texts in one pass vs in segments run side by side), packing, compile, save (seconds per resumable
state), explain (top-2 vs random deletion on the SST-2 recipe's model), processes (1 vs 2 under torchrun),
allocator (training with freed memory kept vs glibc's defaults), profile, pretrain (the language model's output
layer and step); and for deployment, on a 2-layer BiLSTM trained on IMDB and exported: cold (one-text predict on
ONNX vs torch vs `import torch`), backends (batch throughput and accuracy: torch fp32/bf16, ONNX fp32/int8),
serve (32 concurrent clients against `lstmcli serve`). Every comparison runs in this one process and run,
repeated, and reported as a median and a ratio: the machine is shared and noisy. Prints a table and writes
bench/results.json (--quick: bench/results-quick.json); BENCHMARKS.md records a full run with its analysis.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "bench"))

from fasttext_anchor import train_and_test  # noqa: E402
from lstmcli import tokenized  # noqa: E402
from lstmcli.batching import epoch_plan, prefetch  # noqa: E402
from lstmcli.checkpoint import load_run  # noqa: E402
from lstmcli.config import Config, read_recipe  # noqa: E402
from lstmcli.data import is_validation_row, open_source, read_rows  # noqa: E402
from lstmcli.explain import deletion_drops, explain  # noqa: E402
from lstmcli.export import export_run  # noqa: E402
from lstmcli.lm import LanguageModel  # noqa: E402
from lstmcli.loop import Weights, save_state  # noqa: E402
from lstmcli.model import LSTMClassifier  # noqa: E402
from lstmcli.predict import Predictor  # noqa: E402
from lstmcli.pretrain import pretrain  # noqa: E402
from lstmcli.runtime import choose_threads, cpu_has_bf16  # noqa: E402
from lstmcli.tokenizer import encode, train_tokenizer  # noqa: E402
from lstmcli.train import train  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


class Bench:
    def __init__(self, quick: bool, work: Path):
        self.quick, self.work = quick, work
        self.num_threads = choose_threads(0)
        self.dtype = "bf16" if cpu_has_bf16() else "fp32"
        self.rows: list[dict] = []
        self.details: dict = {}

    def row(self, section, metric, value, reference=None, unit="", target=None, met=None, ratio=None):
        """One figure; `ratio` defaults to value / reference (pass the median of paired ratios instead)."""
        ratio = ratio if ratio is not None else value / reference if reference else None
        self.rows.append(dict(section=section, metric=metric, value=value, reference=reference, ratio=ratio,
                              unit=unit, target=target, met=met))
        shown = f"{value:,.3f}" if isinstance(value, float) and value < 100 else f"{value:,.0f}"
        extra = f"  (reference {reference:,.0f}, ratio {ratio:.2f})" if reference else ""
        print(f"  {metric}: {shown} {unit}{extra}" + (f"  target {target}: {'met' if met else 'NOT met'}"
                                                       if target else ""), flush=True)

    @functools.cached_property
    def imdb_train(self) -> list[dict]:
        """IMDB's training rows, read once for every section that samples them."""
        return [json.loads(line) for line in (SHARED / "imdb" / "train.jsonl").open()]

    def imdb_subset(self, count: int, name: str) -> Path:
        """A seeded random sample of IMDB train, as a file of its own."""
        rows = self.imdb_train
        picked = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:count]]
        path = self.work / name
        path.write_text("".join(json.dumps(r) + "\n" for r in picked))
        return path

    def train_run(self, name: str, **settings) -> tuple[dict, list[dict], Path]:
        out = self.work / name
        config = Config(output_dir=str(out), threads=self.num_threads, **{"precision": self.dtype, **settings})
        final = train(config, overwrite=True, quiet=True)
        log = [json.loads(line) for line in (out / "log.jsonl").open()]
        return final, log, out

    # -- 1. training step vs a bare PyTorch loop ----------------------------------------------------------
    def step(self):
        print("training step: lstmcli's loop vs a bare nn.Embedding + nn.LSTM + nn.Linear loop, same batches")
        subset = self.imdb_subset(2000 if self.quick else 8000, "imdb-step.jsonl")
        steps = 20 if self.quick else 100
        # The same work as the bare loop: no dropout there, so none here; its cost is reported on its own.
        shape = dict(max_length=256, batch_size=64, bidirectional=True, embed_dim=128, hidden_size=128,
                     embedding_dropout=0.0)
        # The long-text path: whole reviews (all but 0.02% of IMDB's fit in 2,048 tokens) in segments of 256.
        whole = dict(shape, max_length=2048, segment_length=256)
        for name, settings in (("T<=256", shape),
                               (f"whole texts (T<={whole['max_length']}) in segments of {whole['segment_length']}",
                                whole)):
            ratios, lstmcli_rates, bare_rates = [], [], []
            for repeat in range(2 if self.quick else 3):
                _, log, out = self.train_run("step", dataset=str(subset), max_steps=steps, epochs=1, **settings)
                lstmcli_rate = log[-1]["train_tokens_per_second"]
                bare_rate = bare_loop(lstmcli_batches(out, subset, settings, steps), load_run(out), self.num_threads,
                                      self.dtype)
                lstmcli_rates.append(lstmcli_rate)
                bare_rates.append(bare_rate)
                ratios.append(lstmcli_rate / bare_rate)
            self.details.setdefault("step", {})[name] = dict(lstmcli=lstmcli_rates, bare=bare_rates, steps=steps,
                                                             **settings)
            ratio = statistics.median(ratios)  # of the pairs measured back to back: steadier than a ratio of medians
            self.row("step", f"lstmcli training tokens/s (1-layer BiLSTM-128, B64, IMDB, {name})",
                     statistics.median(lstmcli_rates), statistics.median(bare_rates), "tok/s", ">= 0.95 of bare",
                     ratio >= 0.95, ratio=ratio)
            if settings is shape:
                self.train_rate = statistics.median(lstmcli_rates)
                _, log, _ = self.train_run("step", dataset=str(subset), max_steps=steps, epochs=1,
                                           **dict(shape, embedding_dropout=0.2))
                self.row("step", "the same with the default --embedding-dropout 0.2",
                         log[-1]["train_tokens_per_second"], statistics.median(bare_rates), "tok/s")

    # -- language model (pretrain): its output layer, and a whole step -------------------------------------
    def pretrain(self):
        print("pretrain: the language model's output layer on IMDB's word frequencies, adaptive vs full softmax")
        texts = [r["text"] for r in self.imdb_train[:5000]]
        tokenizer = train_tokenizer([texts], "wordlevel", 20000, 2, True)
        ids = encode(tokenizer, texts, 256).ids.astype(np.int64)
        vocab = tokenizer.get_vocab_size()
        model = LanguageModel(Config(hidden_size=128), vocab, np.bincount(ids, minlength=vocab))
        full = torch.nn.Linear(128, vocab)
        targets = torch.from_numpy(ids[:12_800])
        hidden = torch.randn(len(targets), 128, requires_grad=True)
        torch.set_num_threads(self.num_threads)

        def words_per_second(step) -> float:
            step()
            started = time.perf_counter()
            for _ in range(3):
                step()
            return 3 * len(targets) / (time.perf_counter() - started)

        adaptive = lambda: (-model.softmax(hidden, model.rank[targets]).output.sum()).backward()  # noqa: E731
        whole = lambda: torch.nn.functional.cross_entropy(full(hidden), targets, reduction="sum").backward()  # noqa: E731
        pairs = [(words_per_second(adaptive), words_per_second(whole)) for _ in range(2 if self.quick else 3)]
        ratio = statistics.median(a / w for a, w in pairs)
        self.row("pretrain", f"adaptive softmax words/s (forward+backward, {vocab:,} words, hidden 128)",
                 statistics.median(a for a, _ in pairs), statistics.median(w for _, w in pairs), "words/s",
                 ratio=ratio)
        subset = self.imdb_subset(1000 if self.quick else 4000, "imdb-lm.jsonl")
        out = self.work / "lm"
        pretrain(Config(dataset=str(subset), output_dir=str(out), bidirectional=True, max_steps=20 if self.quick else 60,
                        epochs=1, threads=self.num_threads, precision=self.dtype), overwrite=True, quiet=True)
        log = [json.loads(line) for line in (out / "log.jsonl").open()]
        self.row("pretrain", "pretrain tokens/s (1-layer BiLSTM-128 forward + backward LM, windows of 256)",
                 log[-1]["train_tokens_per_second"], getattr(self, "train_rate", None), "tok/s")

    # -- 2. data pipeline ---------------------------------------------------------------------------------
    def pipeline(self):
        print("data pipeline: stream + tokenize + write, then one epoch of batches, vs raw encode_batch")
        path = self.imdb_subset(5000, "imdb-pipe.jsonl") if self.quick else SHARED / "imdb" / "train.jsonl"
        texts = [json.loads(line)["text"] for line in path.open()]
        tokenizer = train_tokenizer([texts], "wordlevel", 20000, 2, True)
        raw, ours, batching, tokens = [], [], [], 0
        for repeat in range(3):
            started = time.perf_counter()
            tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
            raw.append(time.perf_counter() - started)

            folder = self.work / "pipe"
            shutil.rmtree(folder, ignore_errors=True)
            started = time.perf_counter()
            stream = open_source(str(path)).split("train")
            split = tokenized.build(folder, {"repeat": repeat}, read_rows(stream, str(path), "text", "label"),
                                    tokenizer, 256)
            ours.append(time.perf_counter() - started)

            encoded = split.encoded
            started = time.perf_counter()
            delivered = sum(int(lengths.sum()) for _, lengths in prefetch(
                encoded.batch, epoch_plan(encoded.lengths, 64, 50, 0, repeat)))
            batching.append(time.perf_counter() - started)
        texts_raw, texts_ours = len(texts) / statistics.median(raw), len(texts) / statistics.median(ours)
        self.row("pipeline", "first pass, texts/s (stream + tokenize + write)", texts_ours, texts_raw, "texts/s",
                 ">= 0.7 of raw encode_batch", texts_ours / texts_raw >= 0.7)
        self.row("pipeline", "first pass, tokens/s", tokens / statistics.median(ours), tokens / statistics.median(raw),
                 "tok/s")
        per_epoch = delivered / statistics.median(batching)
        self.row("pipeline", "later epochs, tokens/s delivered (read + pad)", per_epoch, None, "tok/s")
        if hasattr(self, "train_rate"):
            first = tokens / statistics.median(ours)
            self.row("pipeline", "first pass vs training consumption (x)", first / self.train_rate, None, "x",
                     ">= 10x", first / self.train_rate >= 10)
        self.details["pipeline"] = dict(texts=len(texts), raw_seconds=raw, lstmcli_seconds=ours, batching_seconds=batching)

    # -- 3. padding waste ---------------------------------------------------------------------------------
    def padding(self):
        print("padding: share of padded positions in IMDB batches of 64, --max-length 400")
        texts = [row["text"] for row in self.imdb_train]
        tokenizer = train_tokenizer([texts[:5000]], "wordlevel", 20000, 2, True)
        lengths = encode(tokenizer, texts, 400).lengths
        for name, bucket in (("random batches (--bucket-size 1)", 1), ("lstmcli (--bucket-size 50)", 50)):
            plan = epoch_plan(lengths, 64, bucket, 0, 0)
            real = sum(int(lengths[b].sum()) for b in plan)
            padded = sum(len(b) * int(lengths[b].max()) for b in plan)
            waste = 1 - real / padded
            self.row("padding", f"padded share, {name}", waste, None, "", "<= 0.05" if bucket > 1 else None,
                     waste <= 0.05 if bucket > 1 else None)

    # -- 4. time to fastText's accuracy -------------------------------------------------------------------
    # recipe: (the set whose test split it is scored on, evaluate every N steps).
    # Each run is the recipe from recipes/, validating on the test split, so its log tells when test accuracy
    # first reached the accuracy fastText reaches on the same split in the same run. IMDB runs its fast recipe
    # (a quarter of the full recipe's arithmetic a step, chosen by time to accuracy on the holdout).
    TIME_TO_ACCURACY = {"sst2": ("sst2", 250), "rotten_tomatoes": ("rotten_tomatoes", 40), "imdb-fast": ("imdb", 50)}

    def accuracy(self):
        print("time to fastText's test accuracy, fastText trained in the same run; lstmcli's times include "
              "starting, reading and tokenizing, with and without its evaluations on the test split")
        results = {}
        for recipe, (test_set, eval_every) in self.TIME_TO_ACCURACY.items():
            if self.quick and recipe != "sst2":
                continue
            flags = read_recipe(ROOT / "recipes" / f"{recipe}.toml")
            train_set = Path(flags["dataset"]).name
            anchor = train_and_test(SHARED / train_set / "train.jsonl", SHARED / test_set / "test.jsonl")
            target = anchor["accuracy"]
            folder = self.work / f"tta-{recipe}-data"
            folder.mkdir()
            (folder / "train.jsonl").symlink_to(SHARED / train_set / "train.jsonl")
            (folder / "test.jsonl").symlink_to(SHARED / test_set / "test.jsonl")
            command = ["--config", f"recipes/{recipe}.toml", "--dataset", str(folder), "--eval-split", "test",
                       "--eval-every", str(eval_every), "--patience", "0", "--threads", str(self.num_threads)]
            if self.quick:
                command += ["--epochs", "1", "--max-steps", "150", "--eval-every", "75"]
            started_model, wall, log = timed_training(command, self.work / f"tta-{recipe}")
            trace, evaluating = [], 0.0
            for entry in log:
                evaluating += entry["eval_seconds"]
                trace.append(dict(seconds=round(started_model + entry["elapsed"] - evaluating, 1),
                                  with_evaluations=round(started_model + entry["elapsed"], 1),
                                  accuracy=entry["val_accuracy"], step=entry["step"]))
            reached = next((t for t in trace if t["accuracy"] >= target), None)
            best = max(t["accuracy"] for t in trace)
            results[recipe] = dict(target=target, trace=trace, wall=wall, setup=started_model, fasttext=anchor,
                                   flags=flags)
            self.row("accuracy", f"{recipe}: fastText test accuracy (trained in {anchor['train_seconds']:.1f} s)",
                     target, None, "")
            self.row("accuracy", f"{recipe}: best test accuracy (lstmcli, {wall:.0f} s run)", best, None, "",
                     "beats fastText", best > target)
            self.row("accuracy", f"{recipe}: seconds to fastText's accuracy (start, reading and tokenizing: "
                     f"{started_model:.0f} s)", reached["seconds"] if reached else math.nan, None, "s")
            self.row("accuracy", f"{recipe}: the same with lstmcli's evaluations on the test split",
                     reached["with_evaluations"] if reached else math.nan, None, "s")
        self.details["accuracy"] = results

    # -- 5. prediction ------------------------------------------------------------------------------------
    def predict(self):
        print("prediction: cold start of `lstmcli predict` vs `import torch`; batch throughput")
        _, _, run = self.train_run("predict-model", dataset=str(self.imdb_subset(2000, "imdb-pred.jsonl")),
                                   bidirectional=True, epochs=2, max_length=256)
        repeats = 3 if self.quick else 7
        cold, floor = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine
            cold.append(timed([sys.executable, "-m", "lstmcli", "predict", "--model-dir", str(run),
                               "a quiet, wonderful film"]))
            floor.append(timed([sys.executable, "-c", "import torch"]))
        self.row("predict", "cold start `lstmcli predict TEXT` (s)", statistics.median(cold), statistics.median(floor),
                 "s", "<= 1.5x import torch", statistics.median(cold) <= 1.5 * statistics.median(floor))
        test = [json.loads(line) for line in (SHARED / "imdb" / "test.jsonl").open()]
        test = [test[i] for i in np.random.default_rng(1).permutation(len(test))[:1000 if self.quick else 25000]]
        texts, labels = [r["text"] for r in test], [str(r["label"]) for r in test]
        speeds = {}
        for mode in ("fp32", "bf16", "int8"):
            predictor = Predictor.load(run, device="cpu", threads=self.num_threads, quantize=mode == "int8",
                                       precision=None if mode == "int8" else mode)
            started = time.perf_counter()
            predictions = predictor.predict(texts)
            seconds = time.perf_counter() - started
            accuracy = sum(p.label == y for p, y in zip(predictions, labels)) / len(labels)
            speeds[mode] = (len(texts) / seconds, accuracy)
            self.row("predict", f"IMDB test, {mode}: texts/s (accuracy {accuracy:.4f})", len(texts) / seconds,
                     None, "texts/s")
        speedup = speeds["int8"][0] / speeds["fp32"][0]
        drop = speeds["fp32"][1] - speeds["int8"][1]
        self.row("predict", "int8 (--quantize) speed-up over fp32", speedup, None, "x", ">= 1.5x", speedup >= 1.5)
        self.row("predict", "int8 accuracy change (points)", -100 * drop, None, "pt", "<= 0.5 lost", drop <= 0.005)
        self.row("predict", "bf16 speed-up over fp32", speeds["bf16"][0] / speeds["fp32"][0], None, "x")

    # -- 6. memory ----------------------------------------------------------------------------------------
    def memory(self):
        big = 100_000 if self.quick else 2_000_000
        print(f"memory: peak RSS training on 20,000 vs {big:,} generated rows (same steps)")
        peaks = {}
        for rows in (20_000, big):
            folder = self.work / f"rows-{rows}"
            write_generated(folder, rows)
            out = self.work / f"mem-{rows}"
            command = [sys.executable, "-m", "lstmcli", "train", "--dataset", str(folder), "--output-dir", str(out),
                       "--max-steps", "200", "--threads", str(self.num_threads), "--quiet", "--overwrite"]
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            peaks[rows] = peak_rss_mb(process)
            assert process.returncode == 0, process.stderr.read().decode()
            self.row("memory", f"peak RSS, {rows:,} rows ({time.perf_counter() - started:.0f} s)", peaks[rows], None, "MB")
            shutil.rmtree(folder)
        ratio = peaks[big] / peaks[20_000]
        self.row("memory", f"peak RSS ratio, {big:,} / 20,000 rows", ratio, None, "x", "<= 1.2x", ratio <= 1.2)

    # -- extras: threads, precision, packing, torch.compile, processes, profile --------------------------------
    def threads(self):
        print("threads: one training step, 1 vs 2 threads, on the machine as found and with a busy-loop "
              "process holding one core")
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for count in (1, 2):
                    rate = model_step_rate(count, self.dtype, steps=2 if self.quick else 8)
                    self.row("threads", f"{count} thread(s), {'one core held by a busy loop' if busy else 'as found'}",
                             rate, None, "tok/s")
            finally:
                if spinner:
                    spinner.kill()

    def precision(self):
        print("precision: bf16 autocast vs fp32 on the same run (SST-2, 1-layer BiLSTM, 3 epochs)")
        for precision in ("fp32", "bf16"):
            final, log, _ = self.train_run(f"prec-{precision}", dataset=str(SHARED / "sst2"), bidirectional=True,
                                           epochs=1 if self.quick else 3, precision=precision)
            rate = statistics.median(e["train_tokens_per_second"] for e in log)
            self.row("precision", f"{precision}: test accuracy {final['test']['accuracy']:.4f}, training tok/s", rate,
                     None, "tok/s")

    def segments(self):
        print("segments: a training step on 512-token texts read in one pass vs cut into segments that run side "
              "by side as one wider batch (shorter chains of wider matrix products)")
        pieces = (0, 64, 128, 256)
        rates = {piece: [] for piece in pieces}
        for _ in range(1 if self.quick else 3):  # interleaved, so that drift of the machine hits every length
            for piece in pieces:
                rates[piece].append(model_step_rate(self.num_threads, self.dtype, steps=2 if self.quick else 6,
                                                    length=512, segment_length=piece))
        whole = statistics.median(rates[0])
        self.row("segments", "T=512 in one pass (BiLSTM-128, B64), tok/s", whole, None, "tok/s")
        for piece in pieces[1:]:
            self.row("segments", f"T=512 in segments of {piece} vs one pass, tok/s", statistics.median(rates[piece]),
                     whole, "tok/s")

    def packing(self):
        print("packing: exact dense path vs pack_padded_sequence, BiLSTM-128 training step")
        for length in (32, 256):
            dense, packed = packed_vs_dense(length, self.num_threads, self.dtype)
            self.row("packing", f"T={length}: dense (lstmcli) vs packed, tok/s", dense, packed, "tok/s")

    def compile(self):
        print("torch.compile: measured once, as advised")
        if self.quick:
            print("  skipped in --quick (compiling takes about a minute)")
            return
        try:
            eager = model_step_rate(self.num_threads, self.dtype, steps=4)
            compiled = model_step_rate(self.num_threads, self.dtype, steps=4, compile=True)
            self.row("compile", "torch.compile vs eager, tok/s", compiled, eager, "tok/s")
        except Exception as e:  # report, never chase: it is known to fail or not help on nn.LSTM
            self.row("compile", f"torch.compile failed: {type(e).__name__}: {str(e)[:80]}", math.nan)

    def save(self):
        print("save: one resumable state of the 2-layer BiLSTM of `lstmcli train --layers 2 --bidirectional` "
              "(weights, AdamW moments, RNG states), as training writes it")
        torch.manual_seed(0)
        model = LSTMClassifier(Config(layers=2, bidirectional=True), 20000, 2)
        optimizer = torch.optim.AdamW(model.parameters())
        (ids, lengths, y), = synthetic_batches(1, 32)
        F.cross_entropy(model(ids, lengths), y).backward()
        optimizer.step()  # so that the state holds AdamW's moments, as it does in training
        out = self.work / "save"
        out.mkdir()
        seconds = []
        for step in range(1, 8):
            started = time.perf_counter()
            save_state(out, dict(epoch=0, batch=step, step=step, best=None),
                       Weights(model, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), None))
            seconds.append(time.perf_counter() - started)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        self.row("save", f"seconds per save ({sum(p.numel() for p in model.parameters()):,} parameters, "
                 f"{size / 1e6:.1f} MB on disk)", statistics.median(seconds), None, "s")

    def explain(self):
        print("explain: predict --explain on the SST-2 recipe's model; deleting each sentence's top-2 scored "
              "tokens vs 2 random ones (SST-2 test)")
        flags = read_recipe(ROOT / "recipes" / "sst2.toml")
        if self.quick:
            flags.update(epochs=1, max_steps=300)
        _, _, run = self.train_run("explain-model", **flags)
        texts = [json.loads(line)["text"] for line in (SHARED / "sst2" / "test.jsonl").open()]
        texts = texts[:300] if self.quick else texts
        predictor = Predictor.load(run, device="cpu", threads=self.num_threads, precision="fp32")
        started = time.perf_counter()
        for text in texts:
            explain(predictor, text)
        self.row("explain", "texts/s explained (one batched forward pass each)",
                 len(texts) / (time.perf_counter() - started), None, "texts/s")
        drops = deletion_drops(predictor, texts, k=2, seed=0)
        self.row("explain", f"mean drop of the label's probability, top-2 tokens deleted ({drops['texts']} texts)",
                 drops["top_drop"])
        self.row("explain", "mean drop of the label's probability, 2 random tokens deleted", drops["random_drop"])
        self.row("explain", "top-2 / random deletion", drops["ratio"], None, "x", ">= 2x", drops["ratio"] >= 2)
        self.details["explain"] = drops

    def processes(self):
        print("processes: 1 process x 2 threads vs torchrun 2 processes x 1 thread (IMDB subset, same batches/rank)")
        subset = self.imdb_subset(2000 if self.quick else 8000, "imdb-ddp.jsonl")
        steps = "20" if self.quick else "60"
        flags = ["train", "--dataset", str(subset), "--bidirectional", "--epochs", "1", "--max-steps", steps,
                 "--quiet", "--overwrite", "--patience", "0"]
        rates = {}
        for processes in (1, 2):
            out = self.work / f"ddp-{processes}"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                        "-m", "lstmcli"] if processes > 1 else [sys.executable, "-m", "lstmcli"]
            subprocess.run([*launcher, *flags, "--output-dir", str(out), "--threads", str(2 // processes)], cwd=ROOT,
                           env=ENV, check=True, capture_output=True)
            log = [json.loads(line) for line in (out / "log.jsonl").open()]
            rates[processes] = log[-1]["train_tokens_per_second"] * processes  # each rank logs its own rate
            self.row("processes", f"{processes} process(es): training tokens/s, all ranks", rates[processes], None, "tok/s")
        self.row("processes", "2 processes vs 1", rates[2] / rates[1], None, "x")

    def allocator(self):
        print("allocator: training with glibc's malloc keeping freed memory for the next step (lstmcli's setting) "
              "vs its defaults (large buffers mapped afresh each step); IMDB subset, the IMDB recipe's model")
        subset = self.imdb_subset(2000 if self.quick else 4000, "imdb-allocator.jsonl")
        flags = ["train", "--dataset", str(subset), "--bidirectional", "--max-length", "512", "--truncation",
                 "head-tail", "--embedding-dropout", "0.5", "--epochs", "1",
                 "--max-steps", "20" if self.quick else "60", "--threads", str(self.num_threads), "--quiet",
                 "--overwrite", "--patience", "0"]
        # The same CLI with the setting switched off: the one difference between the two children.
        glibc_defaults = "import lstmcli.loop as l, sys; l.keep_freed_memory = lambda: None; " \
                         "from lstmcli.cli import main; sys.exit(main())"
        rates, peaks = {"kept": [], "glibc": []}, {"kept": [], "glibc": []}
        for repeat in range(1 if self.quick else 3):  # interleaved, so that drift of the machine hits both
            for name, launcher in (("glibc", ["-c", glibc_defaults]), ("kept", ["-m", "lstmcli"])):
                out = self.work / f"allocator-{name}"
                process = subprocess.Popen([sys.executable, *launcher, *flags, "--output-dir", str(out)], cwd=ROOT,
                                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                peaks[name].append(peak_rss_mb(process))
                assert process.returncode == 0, process.stderr.read().decode()
                last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
                rates[name].append(last["train_tokens_per_second"])
        self.details["allocator"] = dict(tokens_per_second=rates, peak_rss_mb=peaks)
        ratio = statistics.median(k / g for k, g in zip(rates["kept"], rates["glibc"]))
        self.row("allocator", "training tokens/s, freed memory kept vs glibc's defaults",
                 statistics.median(rates["kept"]), statistics.median(rates["glibc"]), "tok/s", ratio=ratio)
        self.row("allocator", "peak RSS, freed memory kept vs glibc's defaults", statistics.median(peaks["kept"]),
                 statistics.median(peaks["glibc"]), "MB")

    def profile(self):
        print("profile: where a training step's time goes (torch.profiler, self CPU time)")
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(0)
        model = LSTMClassifier(Config(bidirectional=True), 20000, 2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed_steps(model, model.parameters(), synthetic_batches(6, 256), self.dtype)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        self.details["profile"] = table
        print(table)

    # -- deployment: ONNX export, torch-free start, serving ----------------------------------------------
    @functools.cached_property
    def deploy_run(self) -> Path:
        """A realistic model for the deployment sections: a 2-layer BiLSTM-128 trained briefly on IMDB train
        (validating on a held-out share of it, so that IMDB test stays unseen), then `lstmcli export --quantize`."""
        steps = 60 if self.quick else 300
        print(f"  (training a 2-layer BiLSTM-128 on IMDB train for {steps} steps, then lstmcli export --quantize)")
        _, _, run = self.train_run("deploy", dataset=str(SHARED / "imdb"), layers=2, bidirectional=True, epochs=1,
                                   max_steps=steps, eval_split="holdout", max_length=256)
        summary = export_run(run, quantize=True, threads=self.num_threads)
        self.details["export"] = summary
        return run

    @functools.cached_property
    def imdb_test(self) -> tuple[list[str], list[str]]:
        rows = [json.loads(line) for line in (SHARED / "imdb" / "test.jsonl").open()]
        rows = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))[:2000 if self.quick else 25000]]
        return [r["text"] for r in rows], [str(r["label"]) for r in rows]

    def cold(self):
        print("cold start: one-text `lstmcli predict` on the ONNX export vs on torch, and a bare `import torch`")
        command = [sys.executable, "-m", "lstmcli", "predict", "--model-dir", str(self.deploy_run),
                   "a quiet, wonderful film"]
        times = {"onnx": [], "torch": [], "import torch": []}
        for _ in range(3 if self.quick else 7):  # interleaved, so all three see the same machine
            for backend in ("onnx", "torch"):
                times[backend].append(timed([*command, "--backend", backend]))
            times["import torch"].append(timed([sys.executable, "-c", "import torch"]))
        median = {name: statistics.median(values) for name, values in times.items()}
        self.details["cold"] = times
        ratio = median["onnx"] / median["torch"]
        self.row("cold", "`lstmcli predict --backend onnx TEXT` (s), vs the torch path", median["onnx"],
                 median["torch"], "s", "<= 0.35x the torch path", ratio <= 0.35)
        self.row("cold", "`lstmcli predict --backend torch TEXT` (s), vs `import torch`", median["torch"],
                 median["import torch"], "s")

    def backends(self):
        print("batch prediction, IMDB test, 2-layer BiLSTM: torch fp32 and bf16, ONNX Runtime fp32 and int8 "
              "(Predictor.predict: tokenizing included)")
        texts, labels = self.imdb_test
        modes = {"torch fp32": dict(backend="torch", precision="fp32"), "onnx fp32": dict(backend="onnx"),
                 "onnx int8": dict(backend="onnx", quantize=True)}
        if cpu_has_bf16():
            modes["torch bf16"] = dict(backend="torch", precision="bf16")
        predictors = {name: Predictor.load(self.deploy_run, device="cpu", threads=self.num_threads, **options)
                      for name, options in modes.items()}
        rates, accuracy = {name: [] for name in modes}, {}
        for _ in range(1 if self.quick else 2):  # interleaved rounds
            for name, predictor in predictors.items():
                started = time.perf_counter()
                predictions = predictor.predict(texts)
                rates[name].append(len(texts) / (time.perf_counter() - started))
                accuracy[name] = sum(p.label == y for p, y in zip(predictions, labels)) / len(labels)
        self.offline_rates = {name: statistics.median(values) for name, values in rates.items()}
        self.details["backends"] = dict(rates=rates, accuracy=accuracy, texts=len(texts))
        reference = self.offline_rates["torch fp32"]
        for name in modes:
            self.row("backends", f"IMDB test, {name}: texts/s (accuracy {accuracy[name]:.4f})",
                     self.offline_rates[name], None if name == "torch fp32" else reference, "texts/s")
        best = self.offline_rates["onnx int8"] / reference
        lost = accuracy["torch fp32"] - accuracy["onnx int8"]
        self.row("backends", "onnx int8 vs torch fp32, speed", best, None, "x", ">= 1.8x", best >= 1.8)
        self.row("backends", "onnx int8 vs torch fp32, accuracy change (points)", -100 * lost, None, "pt",
                 "<= 0.5 lost", lost <= 0.005)
        held_out = self.details["export"]["validation_accuracy"]
        self.row("backends", f"export --quantize: int8 vs fp32 on the held-out validation share ({held_out['fp32']:.4f}"
                 f" -> {held_out['int8']:.4f}, points)", held_out["change_points"], None, "pt")

    def serve(self):
        clients, count = 32, 600 if self.quick else 4000
        print(f"serving: `lstmcli serve --quantize` (onnx int8), {clients} concurrent keep-alive clients on loopback, "
              f"one IMDB test text per request, {count:,} requests")
        texts = self.imdb_test[0][:count]
        if not hasattr(self, "offline_rates"):
            self.backends()
        process = subprocess.Popen([sys.executable, "-m", "lstmcli", "serve", "--model-dir", str(self.deploy_run),
                                    "--port", "0", "--quantize", "--threads", str(self.num_threads)],
                                   cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            port = int(process.stdout.readline().split("http://127.0.0.1:")[1].split()[0])
            seconds, latencies, errors = load_test(port, texts, clients)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
                batching = json.loads(response.read())["batching"]
        finally:
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=60)
        rate = len(texts) / seconds
        offline = self.offline_rates["onnx int8"]
        p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
        self.details["serve"] = dict(clients=clients, requests=len(texts), seconds=seconds, p50_ms=p50, p99_ms=p99,
                                     errors=errors, exit_code=exit_code, requests_and_model_calls=batching)
        self.row("serve", f"requests/s, {clients} clients x 1 text, vs offline onnx int8 texts/s", rate, offline,
                 "req/s", ">= 0.6 of offline", rate >= 0.6 * offline)
        self.row("serve", "latency p50 (ms)", p50, None, "ms")
        self.row("serve", "latency p99 (ms)", p99, None, "ms", "<= 150 ms", p99 <= 150)
        self.row("serve", f"errors (exit code after SIGTERM: {exit_code})", errors, None, "", "0", errors == 0)


# -- helpers ------------------------------------------------------------------------------------------------
def load_test(port: int, texts: list[str], clients: int) -> tuple[float, list[float], int]:
    """Each client thread keeps one connection and sends one text at a time until `texts` are used up;
    returns the wall time, every request's latency, and the count of failed or wrong answers."""
    position, lock, latencies, errors = iter(range(len(texts))), threading.Lock(), [], []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                index = next(position, None)
            if index is None:
                break
            body = json.dumps({"texts": [texts[index]]})
            started = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"content-type": "application/json"})
                response = connection.getresponse()
                ok = response.status == 200 and len(json.loads(response.read())["predictions"]) == 1
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(index)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, len(errors)

def lstmcli_batches(out: Path, subset: Path, shape: dict, steps: int):
    """The first `steps` batches lstmcli trained on in run `out`, rebuilt in memory from its tokenizer."""
    run = load_run(out)
    texts, labels = [], []
    for line in subset.open():
        row = json.loads(line)
        if row["text"].strip() and not is_validation_row(row["text"], run.config.val_fraction):
            texts.append(row["text"])
            labels.append(row["label"])
    encoded = encode(run.tokenizer, texts, shape["max_length"], run.config.truncation)
    classes = np.array([run.labels.lookup()[k] for k in labels])
    plan = epoch_plan(encoded.lengths, shape["batch_size"], run.config.bucket_size, run.config.seed, 0)[:steps]
    return [(*encoded.batch(rows), torch.from_numpy(classes[rows])) for rows in plan]


def bare_loop(batches, run, threads: int, precision: str) -> float:
    """The practical ceiling: the plainest correct training loop over batches already in memory (cut into
    segments reshaped into one wide batch when the run reads texts in segments)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = run.config
    embedding = nn.Embedding(run.tokenizer.get_vocab_size(), config.embed_dim)
    lstm = nn.LSTM(config.embed_dim, config.hidden_size, batch_first=True, bidirectional=True)
    linear = nn.Linear(2 * config.hidden_size, len(run.labels.names))
    piece = config.segment_length

    def forward(ids, lengths):
        if piece and ids.shape[1] > piece:
            count = -(-ids.shape[1] // piece)
            outputs = lstm(embedding(F.pad(ids, (0, count * piece - ids.shape[1])).view(-1, piece)))[0]
            return linear(outputs.reshape(ids.shape[0], count * piece, -1).amax(dim=1))
        return linear(lstm(embedding(ids))[0].amax(dim=1))

    # Every step counts, the first too, as in lstmcli's own tokens/s.
    return timed_steps(forward, [*embedding.parameters(), *lstm.parameters(), *linear.parameters()], batches,
                       precision, warm_up=False)


def timed_training(flags: list[str], out: Path) -> tuple[float, float, list[dict]]:
    """Run `lstmcli train` as a user would; return the seconds until the model was built (start, reading,
    tokenizing: the status line "model: ..." comes just before the first step), the wall time, and its log."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "lstmcli", "train", *flags, "--output-dir", str(out),
                                "--overwrite"], cwd=ROOT, env={**ENV, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started_model, lines = math.nan, []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("model: ") and math.isnan(started_model):
            started_model = time.perf_counter() - started
    if process.wait() != 0:
        raise RuntimeError(f"lstmcli train {' '.join(flags)} failed:\n{''.join(lines[-20:])}")
    wall = time.perf_counter() - started
    return started_model, wall, [json.loads(line) for line in (out / "log.jsonl").open()]


def peak_rss_mb(process: subprocess.Popen) -> float:
    """The child's own high-water RSS, polled until it exits. (wait4's ru_maxrss is no use here: Linux carries
    the parent's peak over into a child across fork and exec, so every child would report this process's.)"""
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))))
        except (OSError, StopIteration):
            pass  # exiting between poll() and the read
        time.sleep(0.05)
    return peak / 1024


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - started


def synthetic_batches(count: int, length: int, batch: int = 64, vocab: int = 20000, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(int(length * 0.9), length + 1, (batch,), generator=generator)
        lengths[0] = length
        ids = torch.randint(1, vocab, (batch, length), generator=generator)
        ids[torch.arange(length)[None, :] >= lengths[:, None]] = 0
        batches.append((ids, lengths, torch.randint(0, 2, (batch,), generator=generator)))
    return batches


def timed_steps(forward, parameters, batches, precision: str, warm_up: bool = True) -> float:
    """Training tokens/s of forward over batches, AdamW at lr 1e-3; with `warm_up`, the first batch is not
    timed (oneDNN builds its kernels there)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    tokens, started = 0, None if warm_up else time.perf_counter()
    for ids, lengths, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(forward(ids, lengths).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if started is None:
            started = time.perf_counter()
        else:
            tokens += int(lengths.sum())
    return tokens / (time.perf_counter() - started)


def model_step_rate(threads: int, precision: str, steps: int, compile: bool = False, length: int = 256,
                    segment_length: int = 0) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LSTMClassifier(Config(bidirectional=True, segment_length=segment_length), 20000, 2)
    forward = torch.compile(model) if compile else model
    return timed_steps(forward, model.parameters(), synthetic_batches(steps + 1, length), precision)


def packed_vs_dense(length: int, threads: int, precision: str) -> tuple[float, float]:
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.set_num_threads(threads)
    model = LSTMClassifier(Config(bidirectional=True), 20000, 2)
    batches = synthetic_batches(6, length)

    def packed_forward(ids, lengths):
        x = model.embedding(ids)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(model.lstm(packed)[0], batch_first=True, padding_value=float("-inf"))
        return model.classifier(outputs.amax(dim=1))

    return (timed_steps(model, model.parameters(), batches, precision),
            timed_steps(packed_forward, model.parameters(), batches, precision))


def write_generated(folder: Path, rows: int) -> None:
    """Short generated reviews (never committed): enough rows to show whether memory grows with the data."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rows)
    words = np.array("the a film book meal room staff plot was is very quite really and but not it this".split())
    good, bad = np.array("great lovely superb fine".split()), np.array("awful dull poor bland".split())
    with (folder / "train.jsonl").open("w") as f:
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            labels = rng.integers(0, 2, count)
            bodies = rng.choice(words, (count, 10))
            keys = np.where(labels[:, None] == 1, rng.choice(good, (count, 1)), rng.choice(bad, (count, 1)))
            f.writelines(json.dumps({"text": " ".join(b) + " " + k[0], "label": int(y)}) + "\n"
                         for b, k, y in zip(bodies, keys, labels))
    with (folder / "validation.jsonl").open("w") as f:
        f.writelines(json.dumps({"text": f"the film was {w}", "label": int(w in good)}) + "\n"
                     for w in np.concatenate([good, bad]))


SECTIONS = ["step", "pipeline", "padding", "accuracy", "predict", "memory", "threads", "precision", "segments",
            "packing", "compile", "save", "explain", "processes", "allocator", "profile", "pretrain", "cold",
            "backends", "serve"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (under 3 minutes)")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="sections to run")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench: {SHARED} is absent; the benchmarks need the shared datasets beside the checkout.")
    os.chdir(ROOT)
    work = Path(tempfile.mkdtemp(prefix="lstmcli-bench-"))
    bench = Bench(args.quick, work)
    started = time.perf_counter()
    print(f"lstmcli bench on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{bench.num_threads} thread(s), {bench.dtype}, torch {torch.__version__}{' (quick)' if args.quick else ''}")
    try:
        for name in SECTIONS:
            if args.only and name not in args.only:
                continue
            getattr(bench, name)()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run = dict(command=" ".join(["python bench/run.py", *sys.argv[1:]]), date=time.strftime("%Y-%m-%d %H:%M"),
               machine=dict(cpu=cpu_name(), cores=os.cpu_count(), threads=bench.num_threads, precision=bench.dtype,
                            torch=torch.__version__, python=platform.python_version()),
               seconds=round(time.perf_counter() - started))
    path = ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    write_results(path, run, bench, args.only)
    print(f"\n{len(bench.rows)} figures in {run['seconds']} s -> {path.relative_to(ROOT)}")


def write_results(path: Path, run: dict, bench: Bench, only: list[str] | None) -> None:
    """The figures as JSON; a run of some sections (--only) replaces just those sections' figures."""
    result = dict(run, rows=bench.rows, details=bench.details, updates=[])
    if only and path.exists():
        previous = json.loads(path.read_text())
        kept = [r for r in previous["rows"] if r["section"] not in only]
        result = dict(previous, rows=kept + bench.rows,
                      details={**previous["details"], **bench.details},
                      updates=[*previous.get("updates", []), dict(run, sections=only)])
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
