"""Nothing trusted blindly: no pickles, checked files, full disks, and hostile input."""

import json
import pickle
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from conftest import ROOT, TINY, assert_one_line_error, make_rows, named, run_cli, write_jsonl
from lstmcli import checkpoint
from lstmcli.predict import Predictor
from lstmcli.tokenizer import encode


class PlantMarker:
    """Unpickling this writes a marker file: proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def plant(path: Path, marker: Path, kind: str) -> str:
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": PlantMarker(marker)}))
    else:  # the zip-of-pickles format of torch.save
        torch.save({"weight": PlantMarker(marker)}, path)
    return checkpoint.sha256(path.read_bytes())


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_planted_pickle_is_refused_and_never_run(kind, tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "marker"

    # As the model weights, with a matching checksum (whoever can write the file can edit config.json).
    record = json.loads((run / "config.json").read_text())
    record["weights"]["model.safetensors"] = [plant(run / "model.safetensors", marker, kind)]
    (run / "config.json").write_text(json.dumps(record))
    for command in (["predict", "--model-dir", run, "text"], ["eval", "--model-dir", run]):
        code, _, err = cli(*command)
        assert_one_line_error(code, err, "not a valid safetensors file")

    # As a resumable state file.
    position = json.loads((run / "resume.json").read_text())
    position["checksums"]["optimizer"] = plant(run / position["state"] / "optimizer.safetensors", marker, kind)
    (run / "resume.json").write_text(json.dumps(position))
    code, _, err = cli("train", "--resume", "--output-dir", run, "--epochs", "6", "--quiet")
    assert_one_line_error(code, err, "not a valid safetensors file")
    assert not marker.exists()


def test_the_code_never_unpickles():
    source = "\n".join(p.read_text() for p in (ROOT / "lstmcli").glob("*.py"))
    for forbidden in ("import pickle", "torch.load(", "trust_remote_code=True", "weights_only=False"):
        assert forbidden not in source, forbidden


@pytest.mark.parametrize("change,message", [("shape", "has shape"), ("dtype", "float64"), ("missing", "missing")])
def test_weights_that_do_not_fit_the_config_are_refused(change, message, tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    tensors = checkpoint.load_run(run).build_model().state_dict()
    if change == "shape":
        tensors["classifier.weight"] = tensors["classifier.weight"].t().contiguous()
    elif change == "dtype":
        tensors["classifier.weight"] = tensors["classifier.weight"].double()
    else:
        del tensors["classifier.bias"]
    save_file(tensors, str(run / "model.safetensors"))
    record = json.loads((run / "config.json").read_text())
    record["weights"]["model.safetensors"] = [checkpoint.sha256((run / "model.safetensors").read_bytes())]
    (run / "config.json").write_text(json.dumps(record))
    code, _, err = cli("predict", "--model-dir", run, "text")
    assert_one_line_error(code, err, message)


def limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_saving_keeps_the_previous_state(tiny_run, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import OFFLINE

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "log.jsonl"}
    state_before = json.loads((run / "resume.json").read_text())["state"]
    result = subprocess.run([sys.executable, "-m", "lstmcli", "train", "--resume", "--output-dir", str(run),
                             "--epochs", "6", "--quiet"], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **OFFLINE}, preexec_fn=limit_file_size(15_000))  # below the weights (22 KB)
    assert_one_line_error(result.returncode, result.stderr, "free some disk space")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "log.jsonl"}
    assert after["resume.json"] == before["resume.json"] and after["model.safetensors"] == before["model.safetensors"]
    assert (run / state_before).is_dir() and len(list(run.glob("state-*"))) == 1
    assert run_cli("eval", "--model-dir", run, "--json").returncode == 0
    resumed = run_cli("train", "--resume", "--output-dir", run, "--epochs", "6", "--quiet")
    assert resumed.returncode == 0, resumed.stderr


# -- hostile input ----------------------------------------------------------------------------------------

def test_empty_whitespace_nul_and_huge_texts_in_training(tmp_path, cli):
    rows = named(make_rows(400))
    rows += [{"text": "", "label": "positive"}, {"text": "   \t ", "label": "negative"},
             {"text": "nul\x00inside great", "label": "positive"},
             {"text": "great " * 200_000, "label": "positive"}]  # 1.2 MB on one line
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "validation.jsonl", named(make_rows(100, seed=4)))
    code, _, err = cli("train", "--dataset", tmp_path / "data", "--output-dir", tmp_path / "run", *TINY[:-1])
    assert code == 0, err
    assert "skipped 2 rows (0 without text, 0 without label, 2 with empty text)" in err
    assert "truncation: 1 of 402 training texts" in err


def test_predict_takes_whatever_it_is_given(tiny_run, tmp_path, cli):
    texts = tmp_path / "texts.txt"
    texts.write_bytes(b"\n   \nnul\x00byte\n" + b"x" * 1_000_000 + b"\n\xf0\x9f\x98\x80 emoji\n")
    code, out, err = cli("predict", "--model-dir", tiny_run, "--file", texts)
    assert code == 0, err
    assert len(out.splitlines()) == 5
    assert all(line.split("\t")[0] in ("positive", "negative") for line in out.splitlines())


# Random Unicode, plus emoji (with skin tones, flags, ZWJ sequences), combining marks and control characters.
PIECES = ["\u0301", "\u0308", "\u200d", "😀", "👍🏽", "🇫🇷", "👩‍👩‍👧", "\x00", "\ufeff", "\u202e", " ", "\n", "é"]
UNICODE = st.lists(st.one_of(st.characters(codec="utf-8"), st.sampled_from(PIECES)), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(UNICODE, min_size=1, max_size=12))
def test_any_unicode_gets_exactly_one_prediction(texts, tiny_predictor):
    predictions = tiny_predictor.predict(texts)
    assert len(predictions) == len(texts)
    for text, prediction in zip(texts, predictions):
        assert prediction.text == text
        assert np.isclose(sum(prediction.probabilities.values()), 1, atol=1e-5)
        assert prediction.label in prediction.probabilities


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(UNICODE, min_size=1, max_size=12))
def test_any_unicode_encodes_to_valid_ids(texts, tiny_predictor):
    tokenizer = tiny_predictor.run.tokenizer
    encoded = encode(tokenizer, texts, max_length=20)
    assert len(encoded) == len(texts) and (encoded.lengths >= 1).all() and (encoded.lengths <= 20).all()
    assert int(encoded.ids.max(initial=0)) < tokenizer.get_vocab_size()


@pytest.fixture(scope="module")
def tiny_predictor(tiny_run):
    return Predictor.load(tiny_run, device="cpu", threads=1)
