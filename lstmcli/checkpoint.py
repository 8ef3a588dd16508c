"""The run directory: what training leaves on disk, written so that nothing is ever half-written.

    runs/latest/
      config.json        settings, label names, versions, data fingerprint, SHA-256 of the weights
      model.safetensors  the best weights so far (by validation accuracy)
      tokenizer.json     the tokenizer exactly as training used it
      metrics.json       final validation and test metrics
      log.jsonl          one JSON line per evaluation
      report.html        the page lstmcli report writes, on request
      resume.json        the training position (epoch, batch, step, best so far), naming ...
      state-<step>/      ... the model, optimizer and RNG tensors of that position
      cache/             tokenized splits, removed when the run finishes (the last state is kept, so
                         `--resume --epochs N` can extend a finished run)
      .lock              locked (flock) by the process training in the directory; names that process

Every file is written to a temporary name, fsynced and renamed over the old one. Tensors are stored
only as safetensors and everything else as JSON: loading a run never unpickles anything, and each file
is checked (checksum, keys, shapes, dtypes, label names) before a byte of it is used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from . import __version__
from .config import Config, from_mapping
from .data import Labels
from .errors import UserError
from .tokenizer import tokenizer_from_json

if TYPE_CHECKING:  # torch is imported where tensors are handled: reading a run for ONNX inference needs none
    import torch

CONFIG, WEIGHTS, TOKENIZER, METRICS, LOG, RESUME = (
    "config.json", "model.safetensors", "tokenizer.json", "metrics.json", "log.jsonl", "resume.json")
REPORT = "report.html"  # written by lstmcli report, stale once the run is replaced
EXPORTS = ("model.onnx", "model.int8.onnx")  # written by lstmcli export from the weights
CACHE = "cache"
ROUNDS = "rounds"  # self-training's teacher and students but the last, each a run directory (selftrain.py)
LOCK = ".lock"
FORMAT = "lstmcli-run"
FORMAT_VERSION = 1
STATE_PREFIX = "state-"


# -- writing -------------------------------------------------------------------------------------------

def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` so that a crash at any moment leaves either the old or the new file."""
    if isinstance(data, str):
        data = data.encode()
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # os.open with 0o666 lets the user's umask decide the permissions, as for any file they create.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({e.strerror or e}): free some disk space or choose another "
                        "--output-dir; the previous files are unchanged.") from None
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_json(path: Path, value) -> None:
    atomic_write(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def lock_run_dir(directory: Path):
    """Hold `directory` for this process while the block runs: an exclusive flock on its .lock file, which
    the kernel releases whenever the process ends (kill -9 included), so a lock is never left stale. A
    second holder is refused with one line naming the process that has it."""
    directory = Path(directory)
    created = not directory.exists()
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--output-dir {directory} is a file: choose a directory.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UserError(f"cannot use {directory} as a run directory ({e.strerror or e}): choose another "
                        "--output-dir.") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {directory / LOCK} ({e.strerror}): choose an --output-dir on a "
                                "local file system.") from None
            raise UserError(f"{directory} is in use by {_lock_holder(descriptor)}: wait for it to finish or stop "
                            "it, or choose another --output-dir.") from None
        if not (directory / LOCK).exists() or os.stat(directory / LOCK).st_ino != os.fstat(descriptor).st_ino:
            raise UserError(f"{directory} was released by another process just now: run the command again.")
        holder = dict(pid=os.getpid(), command=shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]))
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            if created:  # a directory made here in which nothing came of it leaves no trace
                with contextlib.suppress(OSError):
                    if [p.name for p in directory.iterdir()] == [LOCK]:
                        (directory / LOCK).unlink()
                        directory.rmdir()
    finally:
        os.close(descriptor)


def _lock_holder(descriptor: int) -> str:
    """'process <pid> (<command>)' as the holder wrote it into the lock file, if that process still runs."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        pid, command = int(holder["pid"]), str(holder["command"])
        os.kill(pid, 0)
    except PermissionError:  # it runs, as another user
        pass
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or by a process now gone
        return "another process"
    return f"process {pid} ({command[:200]})"


def prepare_output_dir(directory: Path, *, overwrite: bool, resume: bool) -> None:
    """Make sure training may write into `directory`; refuse to replace anything without --overwrite."""
    holds_run = (directory / CONFIG).exists() or (directory / RESUME).exists()
    if resume:
        if not has_saved_state(directory):
            raise UserError(f"nothing to resume in {directory} (no {RESUME}): start a new run without "
                            "--resume, or point --output-dir at the run to continue.")
        return
    if directory.exists() and not directory.is_dir():
        raise UserError(f"--output-dir {directory} is a file: choose a directory.")
    if holds_run and not overwrite:
        raise UserError(f"{directory} already holds a run: pass --overwrite to replace it, --resume to "
                        "continue it, or choose another --output-dir.")
    if directory.exists() and not holds_run and any(p.name != LOCK for p in directory.iterdir()) \
            and not overwrite:
        raise UserError(f"{directory} is not empty and holds no lstmcli run: choose an empty or new "
                        "--output-dir, or pass --overwrite to write into it anyway.")
    if holds_run:
        remove_run_files(directory)
    directory.mkdir(parents=True, exist_ok=True)


def restartable(directory: Path) -> tuple[bool, bool]:
    """(resume, overwrite) for --auto-resume: resume a saved state; replace only a run that was stopped
    before it saved anything (no state, no weights), so nothing of value is ever replaced."""
    if has_saved_state(directory):
        return True, False
    abandoned = (directory / CONFIG).exists() and not (directory / WEIGHTS).exists()
    return False, abandoned


def has_saved_state(directory: Path) -> bool:
    """Whether a run in `directory` saved a resumable state (in a self-training round, too)."""
    return (directory / RESUME).exists() or any((directory / ROUNDS).glob(f"*/{RESUME}"))


def remove_run_files(directory: Path) -> None:
    """Delete what a run writes, and nothing else the user keeps in the directory."""
    for name in (CONFIG, WEIGHTS, TOKENIZER, METRICS, LOG, RESUME, REPORT, *EXPORTS):
        (directory / name).unlink(missing_ok=True)
    for path in directory.iterdir():
        if path.name.startswith(STATE_PREFIX) or path.name in (CACHE, ROUNDS) \
                or path.name.startswith(".") and ".tmp-" in path.name:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_record(config: Config, labels: Labels | None, vocab_size: int, data: dict, task: str = "classifier") -> dict:
    """The content of config.json, without the weights' checksums. `task` is what the weights are: a
    classifier (`train`) or a language model (`pretrain`, no labels)."""
    import datasets
    import tokenizers
    import torch

    return dict(format=FORMAT, format_version=FORMAT_VERSION, lstmcli_version=__version__,
                versions=dict(torch=torch.__version__, datasets=datasets.__version__,
                              tokenizers=tokenizers.__version__),
                task=task, settings=config.to_dict(),
                labels=dict(names=labels.names, keys=labels.keys) if labels else None,
                vocab_size=vocab_size, data=data, weights={})


def save_weights(directory: Path, record: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Write model.safetensors and its checksum in config.json, consistent after a crash at any point.

    config.json first lists both the old and the new checksum, then the weights are replaced, then the
    old checksum is dropped: whichever step a crash interrupts, the weights on disk match a listed one.
    """
    from safetensors.torch import save as save_safetensors

    data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in state_dict.items()},
                            metadata={"format": FORMAT})
    new = sha256(data)
    old = [h for h in record["weights"].get(WEIGHTS, []) if h != new]
    record["weights"][WEIGHTS] = [new, *old[:1]]
    write_json(directory / CONFIG, record)
    atomic_write(directory / WEIGHTS, data)
    record["weights"][WEIGHTS] = [new]
    write_json(directory / CONFIG, record)


# -- reading -------------------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}): retrain the run, or restore the file from a copy.") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is corrupt (not a JSON object): retrain the run.")
    return value


def read_tensors(path: Path, expected_sha256: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, after checking its checksum; never a pickle."""
    from safetensors.torch import load as load_safetensors

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: retrain the run, or copy the whole run directory.") from None
    if expected_sha256 is not None and sha256(data) not in expected_sha256:
        raise UserError(f"{path} is corrupt (its SHA-256 does not match config.json; truncated or "
                        "modified?): retrain the run, or restore the file from a copy.")
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a valid safetensors file ({str(e)[:120]}): retrain the run; lstmcli "
                        "never loads pickled files.") from None


@dataclass
class Run:
    """A trained run, checked and ready: settings, labels, tokenizer and the record from config.json."""
    directory: Path
    config: Config
    labels: Labels
    tokenizer: object
    record: dict

    def build_model(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The classifier with the run's best weights, validated against the shapes it must have."""
        from .model import LSTMClassifier

        model = LSTMClassifier(self.config, self.record["vocab_size"], len(self.labels.names))
        tensors = read_tensors(self.directory / WEIGHTS, self.record["weights"].get(WEIGHTS))
        check_state_dict(tensors, model.state_dict(), self.directory / WEIGHTS)
        model.load_state_dict(tensors)
        return model.to(device).eval()


def check_state_dict(tensors: dict, expected: dict, path: Path) -> None:
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise UserError(f"{path} does not fit the model in config.json (missing {missing[:4]}, unexpected "
                        f"{extra[:4]}): the files come from different runs; retrain or restore the run.")
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise UserError(f"{path}: {name} has shape {tuple(tensor.shape)} {tensor.dtype}, the model in "
                            f"config.json needs {tuple(want.shape)} {want.dtype}: the files come from "
                            "different runs; retrain or restore the run.")


def load_run(directory: str | Path) -> Run:
    """Open and validate a finished (or in-progress) run directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"run directory {directory} not found: train one with lstmcli train --output-dir "
                        f"{directory}, or pass --model-dir.")
    record = read_json(directory / CONFIG, "this is not an lstmcli run directory; pass --model-dir of a "
                                           "trained run.")
    if record.get("format") != FORMAT:
        raise UserError(f"{directory / CONFIG} is not an lstmcli run: pass --model-dir of a trained run.")
    if record.get("task", "classifier") != "classifier":
        raise UserError(f"{directory} holds a language model (lstmcli pretrain), not a classifier: fine-tune it "
                        f"with lstmcli train --init-from {directory}, and use that run.")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise UserError(f"{directory} was written by {'a newer' if newer else 'an incompatible'} lstmcli "
                        f"(run format {version}, this is {FORMAT_VERSION}): "
                        f"{'upgrade lstmcli' if newer else 'retrain the run with this version'}.")
    try:
        config = Config(**from_mapping(record["settings"], str(directory / CONFIG))).validate()
        labels = Labels(list(map(str, record["labels"]["names"])), list(record["labels"]["keys"]))
        vocab_size = int(record["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{directory / CONFIG} lacks {e} or has it in the wrong form: retrain the run.") from None
    if len(labels.names) < 2 or len(labels.names) != len(labels.keys):
        raise UserError(f"{directory / CONFIG} has no usable label names: retrain the run.")
    if not (directory / WEIGHTS).exists():
        raise UserError(f"{directory / WEIGHTS} is missing (no evaluation finished yet?): wait for training "
                        "to evaluate once, or retrain the run.")
    try:
        tokenizer_text = (directory / TOKENIZER).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        raise UserError(f"{directory / TOKENIZER} is missing or unreadable: retrain the run, or copy the "
                        "whole run directory.") from None
    tokenizer = tokenizer_from_json(tokenizer_text, str(directory / TOKENIZER))
    if tokenizer.get_vocab_size() != vocab_size:
        raise UserError(f"{directory / TOKENIZER} has {tokenizer.get_vocab_size()} tokens but the model was "
                        f"trained with {vocab_size}: the files come from different runs; retrain the run.")
    return Run(directory, config, labels, tokenizer, record)


# -- resumable training state ---------------------------------------------------------------------------

def save_state(directory: Path, position: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Write a resumable state as one unit: tensors into a new state-<step>/ folder, then resume.json.

    resume.json names the folder and holds each file's checksum; its atomic replacement is the moment
    the new state takes effect. Older folders are deleted only after that.
    """
    from safetensors.torch import save as save_safetensors

    folder = directory / f"{STATE_PREFIX}{position['step']:010d}"
    current = _current_state(directory)
    if folder.name == current:  # saving the same step again: keep the committed folder until the new one is
        folder = folder.with_name(folder.name + "b")
    shutil.rmtree(folder, ignore_errors=True)
    checksums = {}
    try:
        folder.mkdir()
        for name, group in tensors.items():
            data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in group.items()})
            atomic_write(folder / f"{name}.safetensors", data)
            checksums[name] = sha256(data)
        write_json(directory / RESUME, {**position, "state": folder.name, "checksums": checksums})
    except (OSError, UserError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        message = str(e) if isinstance(e, UserError) else f"could not write {folder} ({e.strerror or e})"
        raise UserError(f"{message.split(':')[0]}: free some disk space or choose another --output-dir; the "
                        "previous saved state is intact, continue later with --resume.") from None
    for old in directory.glob(f"{STATE_PREFIX}*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def _current_state(directory: Path) -> str | None:
    try:
        return json.loads((directory / RESUME).read_text())["state"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_state(directory: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """The position and tensors of the last saved state, each file checked against its checksum."""
    position = read_json(directory / RESUME, "nothing to resume; start a new run without --resume.")
    try:
        folder = directory / position["state"]
        checksums = position["checksums"]
    except (KeyError, TypeError):
        raise UserError(f"{directory / RESUME} is corrupt: start a new run (--overwrite).") from None
    if Path(position["state"]).name != position["state"] or not position["state"].startswith(STATE_PREFIX):
        raise UserError(f"{directory / RESUME} names a state outside the run: start a new run (--overwrite).")
    tensors = {name: read_tensors(folder / f"{name}.safetensors", [digest]) for name, digest in checksums.items()}
    return position, tensors


def remove_cache(directory: Path) -> None:
    """Drop the tokenized splits once a run finishes; the last state stays, so --resume can extend it."""
    shutil.rmtree(directory / CACHE, ignore_errors=True)
