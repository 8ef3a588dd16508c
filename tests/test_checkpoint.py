"""A run directory round-trips exactly and is written safely."""

import json
import os
import stat

import pytest
import torch

from conftest import run_cli
from lstmcli import checkpoint
from lstmcli.checkpoint import atomic_write, load_run
from lstmcli.errors import UserError
from lstmcli.predict import Predictor

TEXTS = ["a wonderful superb film", "awful dull plot", "the service was quite excellent", "it", "poor poor poor"]


def test_a_new_process_gives_identical_probabilities(tiny_run):
    here = Predictor.load(tiny_run, device="cpu", threads=1).predict(TEXTS)
    result = run_cli("predict", "--model-dir", tiny_run, "--json", "--threads", "1", *TEXTS)
    assert result.returncode == 0, result.stderr
    there = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["label"] for p in there] == [p.label for p in here]
    for mine, theirs in zip(here, there):
        for name, probability in mine.probabilities.items():
            assert theirs["probabilities"][name] == pytest.approx(probability, abs=1e-6)


def test_loaded_model_matches_the_saved_tensors(tiny_run):
    from safetensors.torch import load_file

    run = load_run(tiny_run)
    model = run.build_model()
    saved = load_file(str(tiny_run / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_config_records_settings_labels_versions_and_checksum(tiny_run):
    record = json.loads((tiny_run / "config.json").read_text())
    assert record["labels"]["names"] == ["negative", "positive"]
    assert record["settings"]["bidirectional"] is True and record["settings"]["embed_dim"] == 16
    assert record["versions"]["torch"].startswith("2.") and record["lstmcli_version"]
    assert record["data"]["fingerprint"] and record["data"]["rows"]["train"] == 400
    assert record["weights"]["model.safetensors"] == [checkpoint.sha256((tiny_run / "model.safetensors").read_bytes())]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "file.json"
    atomic_write(target, "old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(UserError, match="No space left"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]  # no temporary file left behind


def test_files_follow_the_users_umask(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "private", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    atomic_write(tmp_path / "shared", "x")
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o666 & ~old


def test_weights_stay_loadable_if_a_switch_is_interrupted(tiny_run, tmp_path, monkeypatch):
    """save_weights lists both checksums while it replaces the file: a crash in between keeps the run readable."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "config.json").read_text())
    model = load_run(run).build_model()
    state = {k: v + 1 for k, v in model.state_dict().items()}
    real_write = checkpoint.atomic_write

    def crash_on_weights(path, data):
        if path.name == "model.safetensors":
            raise KeyboardInterrupt  # killed just before the weights are replaced
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", crash_on_weights)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_weights(run, record, state)
    monkeypatch.undo()
    old = load_run(run).build_model().state_dict()
    assert all(torch.equal(old[k], model.state_dict()[k]) for k in old)
    checkpoint.save_weights(run, record, state)
    new = load_run(run).build_model().state_dict()
    assert all(torch.equal(new[k], state[k]) for k in new)
