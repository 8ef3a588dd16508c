"""One run per directory: an OS lock held while training uses it, released on any exit, kill -9 included."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import OFFLINE, ROOT, TINY, assert_one_line_error, write_splits
from lstmcli.checkpoint import LOCK, lock_run_dir
from lstmcli.errors import UserError


def wait_for_lock_holder(lock_file, process, timeout=120):
    """Wait until `process` has written itself into the run directory's lock file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(lock_file.read_text())["pid"] == process.pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("the training process never took the lock")


def test_a_second_training_is_refused_until_the_first_is_killed(tmp_path, tiny_run, cli):
    data = write_splits(tmp_path / "data", train=3000, validation=100, test=100, seed=5)
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "lstmcli", "train", "--dataset", str(data), "--output-dir", str(out),
                              *TINY, "--epochs", "500"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE})
    try:
        wait_for_lock_holder(out / LOCK, first)
        for extra in ([], ["--overwrite"], ["--resume"]):
            while extra == ["--resume"] and not (out / "config.json").exists():  # what --resume reads first
                assert first.poll() is None, first.communicate()
                time.sleep(0.02)
            code, _, err = cli("train", "--dataset", data, "--output-dir", out, *TINY, *extra)
            assert_one_line_error(code, err, f"in use by process {first.pid}", "lstmcli train", "--output-dir")
        code, out_text, err = cli("predict", "--model-dir", tiny_run, "superb lovely")  # runs elsewhere still read
        assert code == 0 and out_text.startswith("positive"), err
        assert first.poll() is None  # the refused commands left the first run alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    code, _, err = cli("train", "--dataset", data, "--output-dir", out, "--overwrite", *TINY, "--epochs", "1")
    assert code == 0, err
    assert (out / "metrics.json").exists()


def test_the_lock_is_exclusive_within_a_process_too_and_released_after_the_block(tmp_path):
    with lock_run_dir(tmp_path / "run"):
        with pytest.raises(UserError, match=f"in use by process {os.getpid()} "):
            with lock_run_dir(tmp_path / "run"):
                pass
        (tmp_path / "run" / "kept").write_text("x")
    with lock_run_dir(tmp_path / "run"):
        assert (tmp_path / "run" / "kept").exists()


def test_a_refused_run_leaves_no_directory_behind(tmp_path, tiny_dataset, cli):
    code, _, err = cli("train", "--resume", "--dataset", tiny_dataset, "--output-dir", tmp_path / "typo", *TINY)
    assert_one_line_error(code, err, "nothing to resume")
    assert not (tmp_path / "typo").exists()


def test_a_file_where_the_run_directory_should_be_is_refused(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        with lock_run_dir(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "mine"
