"""Training under torchrun (gloo, CPU): sharding, one checkpoint, exact evaluation, restarts, devices."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from conftest import OFFLINE, ROOT, make_rows, named, run_cli, write_jsonl, write_splits
from lstmcli import cores, runtime
from lstmcli.checkpoint import load_run
from lstmcli.errors import UserError
from lstmcli.tokenizer import encode

FLAGS = ["--embed-dim", "16", "--hidden-size", "16", "--epochs", "2", "--batch-size", "16", "--min-frequency", "1",
         "--bidirectional", "--quiet"]


def torchrun(*args, processes=2, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    return subprocess.Popen(list(map(str, command)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **OFFLINE}, **popen)


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    # odd numbers of rows, so that the two ranks' shards differ in length
    return write_splits(tmp_path_factory.mktemp("odd"), train=1001, validation=201, test=99, seed=21)


@pytest.fixture(scope="module")
def ddp_run(odd_dataset, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    process = torchrun("tests/ddp_worker.py", base, "train", "--dataset", odd_dataset, "--output-dir", base / "run",
                       *FLAGS)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return base, out, err


def test_two_processes_train_one_checkpoint_that_learns(ddp_run):
    base, out, _ = ddp_run
    run = base / "run"
    assert out.strip().count("\n") == 0 and json.loads(out)["test"] > 0.85  # one rank prints the result
    assert len(list(run.glob("model.safetensors"))) == 1 and len(list(run.glob("state-*"))) == 1
    assert json.loads((run / "resume.json").read_text())["world_size"] == 2
    predicted = run_cli("predict", "--model-dir", run, "superb lovely", "dreadful dull")
    assert predicted.returncode == 0 and [l.split("\t")[0] for l in predicted.stdout.splitlines()] == \
        ["positive", "negative"]


def test_every_training_example_is_used_once_per_epoch_across_ranks(ddp_run, odd_dataset):
    base, _, _ = ddp_run
    records = [json.loads((base / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(records)  # both ranks trained
    tokenizer = load_run(base / "run").tokenizer
    texts = [json.loads(line)["text"] for line in (odd_dataset / "train.jsonl").open()]
    encoded = encode(tokenizer, texts, 256)
    expected = Counter(tuple(encoded.ids[encoded.offsets[i]:encoded.offsets[i + 1]].tolist()) for i in range(len(texts)))
    for epoch in (0, 1):
        seen = Counter(tuple(ids) for record in records for e, ids in record if e == epoch)
        assert seen == expected
    per_rank = [sum(1 for e, _ in record if e == 0) for record in records]
    assert sorted(per_rank) in ([500, 501], [501, 500])


def test_distributed_evaluation_equals_a_single_process_one(ddp_run, cli):
    base, _, _ = ddp_run
    metrics = json.loads((base / "run" / "metrics.json").read_text())
    code, out, err = cli("eval", "--model-dir", base / "run", "--split", "validation", "--json")
    assert code == 0, err
    single = json.loads(out)
    assert single["confusion_matrix"] == metrics["validation"]["confusion_matrix"]
    assert single["accuracy"] == metrics["validation"]["accuracy"]


def test_resuming_with_another_number_of_processes_is_refused(ddp_run, tmp_path, cli):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ddp_run[0] / "run", run)
    code, _, err = cli("train", "--resume", "--output-dir", run, "--epochs", "3")
    assert code == 1 and "saved by 2 process(es)" in err


def test_a_dead_rank_stops_the_job_and_a_restart_resumes_it(odd_dataset, tmp_path):
    """kill -9 of one rank: torchrun --max-restarts restarts both, --auto-resume continues from the state."""
    big = tmp_path / "big"
    write_jsonl(big / "train.jsonl", named(make_rows(8001, seed=31)))
    write_jsonl(big / "validation.jsonl", named(make_rows(101, seed=32)))
    out = tmp_path / "run"
    process = torchrun("--max-restarts=1", "-m", "lstmcli", "train", "--auto-resume", "--dataset", big, "--output-dir",
                       out, *FLAGS[:-1], "--save-every", "40", "--threads", "1")  # not --quiet: we read its lines
    deadline = time.monotonic() + 120
    while not (out / "resume.json").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-f", f"lstmcli train --auto-resume --dataset {big}"], capture_output=True,
                             text=True).stdout.split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "another process of this torchrun job stopped" in err and "--resume" in err
    assert "resumed at epoch" in err
    assert json.loads((out / "metrics.json").read_text())["validation"]["accuracy"] > 0.9


# -- without a GPU: the device logic itself --------------------------------------------------------------

def test_device_selection_with_and_without_cuda(monkeypatch):
    assert runtime.choose_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA GPU"):
        runtime.choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.choose_device("auto", local_rank=3) == torch.device("cuda:1")
    assert runtime.choose_device("cuda:0") == torch.device("cuda:0")
    assert runtime.choose_precision("auto", torch.device("cuda:0")) == torch.float16
    assert runtime.choose_precision("fp32", torch.device("cuda:0")) is None
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        runtime.choose_precision("fp16", torch.device("cpu"))
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.choose_precision("auto", torch.device("cpu")) is None
    with pytest.raises(UserError, match="AVX512-BF16 or AMX"):
        runtime.choose_precision("bf16", torch.device("cpu"))


def test_threads_are_shared_among_local_processes(monkeypatch):
    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    monkeypatch.setattr(cores, "idle_cores", lambda cores, seconds=0.1: 8.0)
    assert runtime.choose_threads(0, local_processes=1) == 8
    assert runtime.choose_threads(0, local_processes=2) == 4
    assert runtime.choose_threads(0, local_processes=16) == 1
    monkeypatch.setattr(cores, "idle_cores", lambda cores, seconds=0.1: 1.1)  # other work holds 7 cores
    assert runtime.choose_threads(0, local_processes=1) == 1
    assert runtime.choose_threads(3, local_processes=2) == 3


def test_two_processes_pretrain_one_language_model(tmp_path):
    """pretrain under torchrun: sharded text, one run directory, the held-out perplexity summed over ranks."""
    from test_pretrain import reviews
    from lstmcli.config import Config
    from lstmcli.lm import LanguageModel
    from lstmcli.pretrain import held_out_loss
    from lstmcli.runtime import setup
    from lstmcli.checkpoint import read_tensors
    from lstmcli.tokenizer import tokenizer_from_json

    text = write_jsonl(tmp_path / "text.jsonl", reviews(1001, lambda words: words, seed=4))  # an odd number of rows
    out = tmp_path / "lm"
    process = torchrun("-m", "lstmcli", "pretrain", "--dataset", text, "--output-dir", out, *FLAGS)
    printed, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    result = json.loads(printed)  # one rank prints
    assert result["validation_perplexity"] < result["unigram_perplexity"]
    assert json.loads((out / "resume.json").read_text())["world_size"] == 2
    assert len(list(out.glob("model.safetensors"))) == 1
    # The perplexity the two ranks agreed on is that of the whole held-out text, scored here in one process.
    settings = Config(**{**json.loads((out / "config.json").read_text())["settings"], "threads": 1})
    tokenizer = tokenizer_from_json((out / "tokenizer.json").read_text(), "tokenizer")
    model = LanguageModel(settings, tokenizer.get_vocab_size())
    model.load_state_dict(read_tensors(out / "model.safetensors"))
    from lstmcli.data import open_source, read_rows
    source = open_source(str(text))
    texts = [t for chunk, _ in read_rows(source.split("train"), "train", "text", None, holdout=(0.1, True)) for t in chunk]
    held_out = encode(tokenizer, texts, settings.max_length)  # short texts: one window each
    loss = held_out_loss(model, held_out, 256, setup("cpu", "fp32", 1))
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(metrics["validation"]["loss"] - loss) < 0.02, (metrics["validation"], loss)
