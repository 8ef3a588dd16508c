"""lstmcli export: the ONNX graph gives the torch model's probabilities, and predict/eval run it without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from lstmcli.backends import load_scorer
from lstmcli.checkpoint import load_run, sha256
from lstmcli.config import Config
from lstmcli.errors import UserError
from lstmcli.export import export_run
from lstmcli.predict import Predictor
from lstmcli.tokenizer import encode
from lstmcli.train import train

from conftest import OFFLINE, ROOT, TINY_SETTINGS, assert_one_line_error, make_rows, run_cli

SHAPES = [  # every pooling; bi- and unidirectional; 1 and 2 layers; learned initial state; no bias
    dict(bidirectional=True, layers=1, pooling="max"),
    dict(bidirectional=True, layers=2, pooling="mean-max", init_state="learned"),
    dict(bidirectional=True, layers=1, pooling="last", bias=False),
    dict(bidirectional=True, layers=2, pooling="mean"),
    dict(bidirectional=False, layers=2, pooling="last"),
    dict(bidirectional=False, layers=1, pooling="mean-max"),
    dict(bidirectional=False, layers=1, pooling="max", init_state="learned"),
    dict(bidirectional=False, layers=2, pooling="mean", bias=False),
    # long texts read in segments (--segment-length), each direction within each segment's own length
    dict(bidirectional=True, layers=2, pooling="mean-max", segment_length=8, init_state="learned"),
    dict(bidirectional=False, layers=1, pooling="max", segment_length=5),
]
TEXTS = [row["text"] for row in make_rows(40, seed=7)] + ["great", "", "awful " * 60]


def train_run(folder, dataset, **shape):
    settings = dict(TINY_SETTINGS, epochs=2, precision="fp32", max_length=48, **shape)
    train(Config(dataset=str(dataset), output_dir=str(folder), **settings), quiet=True)
    return folder


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, tiny_dataset):
    """A run that computes in fp32 on torch too, so both backends must agree to rounding, with its export."""
    run = train_run(tmp_path_factory.mktemp("export") / "fp32", tiny_dataset, bidirectional=True, layers=2)
    export_run(run)
    return run


def torch_and_onnx(run, ids, lengths):
    loaded = load_run(run)
    logits = [load_scorer(loaded, backend, device="cpu", threads=1).logits(ids, lengths)
              for backend in ("torch", "onnx")]
    return [np.exp(x) / np.exp(x).sum(axis=1, keepdims=True) for x in logits]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_export_matches_torch_at_every_length_and_batch_mix(tmp_path, tiny_dataset, shape):
    run = train_run(tmp_path / "run", tiny_dataset, **shape)
    summary = export_run(run)
    assert summary["max_probability_difference"] <= 1e-4
    loaded = load_run(run)
    encoded = encode(loaded.tokenizer, TEXTS, loaded.config.max_length)
    rng = np.random.default_rng(0)
    batches = [np.array([i]) for i in (0, len(TEXTS) - 1, len(TEXTS) - 2)]  # one text: T = its own length
    batches += [rng.permutation(len(TEXTS))[:size] for size in (2, 5, 17, len(TEXTS))]  # mixed lengths, T = longest
    widths = set()
    for rows in batches:
        ids, lengths = encoded.padded(rows)
        widths.add(ids.shape[1])
        torch_probabilities, onnx_probabilities = torch_and_onnx(run, ids, lengths)
        assert np.abs(torch_probabilities - onnx_probabilities).max() <= 1e-4
    assert len(widths) >= 4  # one graph, run at several lengths (an exporter once froze T: pytorch#191855)
    assert np.abs(torch_probabilities - 0.5).max() > 0.05  # the model has learned something to compare


def test_padding_never_changes_a_texts_result(fp32_run):
    loaded = load_run(fp32_run)
    scorer = load_scorer(loaded, "onnx", threads=1)
    encoded = encode(loaded.tokenizer, TEXTS, loaded.config.max_length)
    alone = np.concatenate([scorer.logits(*encoded.padded(np.array([i]))) for i in range(len(TEXTS))])
    together = scorer.logits(*encoded.padded(np.arange(len(TEXTS))))
    assert np.abs(alone - together).max() < 1e-5
    ids, lengths = encoded.padded(np.arange(len(TEXTS)))
    wider = np.pad(ids, ((0, 0), (0, 9)))  # more padding than any text needs
    assert np.abs(scorer.logits(wider, lengths) - together).max() < 1e-5


def test_export_records_inputs_and_hashes_and_keeps_the_run_loadable(fp32_run):
    record = json.loads((fp32_run / "config.json").read_text())
    entry = record["exports"]["model.onnx"]
    assert entry["sha256"] == sha256((fp32_run / "model.onnx").read_bytes())
    assert entry["weights_sha256"] == record["weights"]["model.safetensors"][0]
    assert entry["inputs"] == [dict(name="input_ids", dtype="int64", shape=["batch", "time"]),
                               dict(name="lengths", dtype="int64", shape=["batch"])]
    assert [o["name"] for o in entry["outputs"]] == ["logits", "probabilities"]
    assert entry["opset"] == onnx.load(fp32_run / "model.onnx").opset_import[0].version
    load_run(fp32_run)  # still a valid run


def test_quantize_writes_dynamic_int8_lstm_and_reports_accuracy(tmp_path, fp32_run):
    run = tmp_path / "run"
    shutil.copytree(fp32_run, run)
    result = run_cli("export", "--model-dir", run, "--quantize", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "int8 on validation (100 texts): accuracy" in result.stdout
    graph = onnx.load(run / "model.int8.onnx")
    operators = [node.op_type for node in graph.graph.node]
    assert operators.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in operators
    accuracy = json.loads((run / "config.json").read_text())["exports"]["model.int8.onnx"]["validation_accuracy"]
    assert accuracy["examples"] == 100 and abs(accuracy["change_points"]) <= 5
    exact = Predictor.load(run, backend="onnx", threads=1).predict(TEXTS)
    int8 = Predictor.load(run, backend="onnx", quantize=True, threads=1).predict(TEXTS)
    assert sum(a.label == b.label for a, b in zip(exact, int8)) >= 0.9 * len(TEXTS)
    assert max(abs(a.probability - b.probability) for a, b in zip(exact, int8)) < 0.1


def in_subprocess(*args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """lstmcli's main() in a fresh process; also says whether torch was imported."""
    code = ("import sys; from lstmcli.cli import main; code = main(sys.argv[1:]); "
            "print('torch' in sys.modules, file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **OFFLINE}, timeout=300)
    *errors, torch_loaded = result.stderr.strip().splitlines()
    result.stderr = "\n".join(errors)
    return result, torch_loaded == "True"


def test_predict_and_eval_on_onnx_never_import_torch_and_agree_with_torch(fp32_run, tiny_dataset):
    texts = ["a wonderful and delightful film", "boring, dull, awful"]
    outputs = {}
    for backend in ("onnx", "auto", "torch"):
        result, torch_loaded = in_subprocess("predict", "--model-dir", fp32_run, "--backend", backend, "--json", *texts)
        assert result.returncode == 0, result.stderr
        assert torch_loaded == (backend == "torch")
        outputs[backend] = [json.loads(line) for line in result.stdout.splitlines()]
    for onnx_line, torch_line in zip(outputs["onnx"], outputs["torch"]):
        assert onnx_line["label"] == torch_line["label"]
        assert onnx_line["probabilities"] == pytest.approx(torch_line["probabilities"], abs=1e-5)
    assert outputs["auto"] == outputs["onnx"]

    metrics = {}
    for backend in ("onnx", "torch"):
        result, torch_loaded = in_subprocess("eval", "--model-dir", fp32_run, "--backend", backend, "--json")
        assert result.returncode == 0, result.stderr
        assert torch_loaded == (backend == "torch")
        metrics[backend] = json.loads(result.stdout)
    assert metrics["onnx"]["backend"].startswith("onnx") and metrics["torch"]["backend"].startswith("torch fp32")
    for key in ("accuracy", "macro_f1", "confusion_matrix", "per_class", "num_examples"):
        assert metrics["onnx"][key] == metrics["torch"][key]
    assert metrics["onnx"]["loss"] == pytest.approx(metrics["torch"]["loss"], abs=1e-5)

    result, torch_loaded = in_subprocess("predict", "--model-dir", fp32_run, "--backend", "onnx",
                                         "--file", tiny_dataset / "test.jsonl")  # a structured file, via datasets
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 100 and not torch_loaded


def test_python_api_is_lazy_and_torch_free(fp32_run):
    code = ("import sys, lstmcli; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "from lstmcli import Predictor; p = Predictor.load(sys.argv[1]); "
            "r = p.predict(['a wonderful film', 'awful'])[0]; "
            "print(p.scorer.backend, r.label, round(sum(r.probabilities.values()), 4), r.probability == "
            "max(r.probabilities.values()), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(fp32_run)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnx", "positive", "1.0", "True", "False"]


def test_a_tampered_or_stale_export_is_refused(tmp_path, fp32_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(fp32_run, run)
    data = bytearray((run / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (run / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        Predictor.load(run, backend="onnx")
    with pytest.raises(UserError, match="not an export recorded in config.json: pass --overwrite"):
        export_run(run)
    export_run(run, overwrite=True)
    assert Predictor.load(run).scorer.backend == "onnx"

    record = json.loads((run / "config.json").read_text())
    record["exports"]["model.onnx"]["weights_sha256"] = "0" * 64  # as if exported from earlier weights
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="not exported from this run's weights; re-run lstmcli export"):
        Predictor.load(run, backend="onnx")
    capsys.readouterr()
    assert Predictor.load(run, threads=1).scorer.backend == "torch"  # auto falls back, and says why
    assert "warning: model.onnx was not exported from this run's weights" in capsys.readouterr().err


def test_export_refuses_a_model_it_does_not_reproduce(tmp_path, fp32_run, monkeypatch):
    from lstmcli.model import LSTMClassifier

    run = tmp_path / "run"
    shutil.copytree(fp32_run, run)
    original = LSTMClassifier.forward
    monkeypatch.setattr(LSTMClassifier, "forward", lambda self, ids, lengths: original(self, ids, lengths) * 1.5)
    with pytest.raises(UserError, match="not supported by export"):
        export_run(run, overwrite=True)


def test_export_and_onnx_errors_are_one_line(tmp_path, tiny_run):
    result = run_cli("export", "--model-dir", tmp_path / "missing")
    assert_one_line_error(result.returncode, result.stderr, "not found")
    result = run_cli("predict", "--model-dir", tiny_run, "--backend", "onnx", "fine")
    assert_one_line_error(result.returncode, result.stderr, "there is no model.onnx", "lstmcli export")
    result = run_cli("eval", "--model-dir", tiny_run, "--backend", "onnx", "--quantize")
    assert_one_line_error(result.returncode, result.stderr, "model.int8.onnx", "lstmcli export --quantize")
    result = run_cli("predict", "--model-dir", tiny_run, "--backend", "tensorflow", "fine")
    assert result.returncode == 2 and "tensorflow" in result.stderr
