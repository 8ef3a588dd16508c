"""Where inference runs: the run's torch model, or its ONNX export (`lstmcli export`) in ONNX Runtime.

Either way inference is a `Scorer`: padded token ids (batch, time) and lengths (batch), int64 numpy
arrays, in; float32 logits (batch, classes) out. Tokenizing, batching, metrics and serving are shared
and torch-free, so the onnx backend never imports torch (which alone takes longer to import than a
whole ONNX prediction: BENCHMARKS.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .checkpoint import WEIGHTS, Run, sha256
from .cores import choose_threads
from .errors import UserError

if TYPE_CHECKING:
    import torch

    from .runtime import Runtime

BACKENDS = ("auto", "torch", "onnx")
ONNX_FP32, ONNX_INT8 = "model.onnx", "model.int8.onnx"
INPUTS = ("input_ids", "lengths")  # the exported graph's inputs, in this order


@dataclass
class Scorer:
    logits: Callable[[np.ndarray, np.ndarray], np.ndarray]
    backend: str  # "torch" or "onnx"
    description: str  # what runs, for status lines and /health


def load_scorer(run: Run, backend: str = "auto", *, device: str = "auto", threads: int = 0, quantize: bool = False,
                precision: str | None = None) -> Scorer:
    """The run's model on `backend`: torch, onnx, or auto (ONNX when the run has a current export for the
    request and nothing asks for torch: a CUDA device or a precision)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r} is not one of: {', '.join(BACKENDS)}.")
    name = ONNX_INT8 if quantize else ONNX_FP32
    if backend == "auto":
        wants_torch = device not in ("auto", "cpu") or precision not in (None, "fp32")
        problem = export_problem(run, name)
        backend = "torch" if wants_torch or problem else "onnx"
        if problem and not wants_torch and (run.directory / name).exists():
            print(f"warning: {problem}; using torch.", file=sys.stderr)
    if backend == "torch":
        return torch_backend(run, device=device, threads=threads, quantize=quantize, precision=precision)
    if device not in ("auto", "cpu") or precision not in (None, "fp32"):
        raise UserError("--backend onnx runs in fp32 (or int8 with --quantize) on CPU: drop --device/precision, "
                        "or use --backend torch.")
    return onnx_backend(run, name, threads)


# -- ONNX Runtime ----------------------------------------------------------------------------------------

def export_problem(run: Run, name: str) -> str | None:
    """Why `name` cannot serve this run (missing, or exported from other weights), or None."""
    entry = run.record.get("exports", {}).get(name)
    if not (run.directory / name).exists():
        return f"there is no {name}; write it with lstmcli export{' --quantize' if name == ONNX_INT8 else ''}"
    if not isinstance(entry, dict) or entry.get("weights_sha256") not in run.record["weights"].get(WEIGHTS, []):
        return f"{name} was not exported from this run's weights; re-run lstmcli export"
    return None


def onnx_backend(run: Run, name: str, threads: int) -> Scorer:
    import onnxruntime

    problem = export_problem(run, name)
    if problem:
        raise UserError(f"--backend onnx: {problem} --model-dir {run.directory}.")
    path = run.directory / name
    data = path.read_bytes()
    if sha256(data) != run.record["exports"][name].get("sha256"):
        raise UserError(f"{path} is corrupt (its SHA-256 does not match config.json): re-run lstmcli export "
                        f"--model-dir {run.directory}.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = choose_threads(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's own warnings are not the user's to act on
    try:
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for files it cannot load
        raise UserError(f"{path} could not be loaded by ONNX Runtime ({str(e)[:160]}): re-run lstmcli "
                        "export.") from None

    def logits(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return session.run(["logits"], dict(zip(INPUTS, (ids, lengths))))[0]

    return Scorer(logits, "onnx", f"onnx {name}, {options.intra_op_num_threads} thread(s)")


# -- torch -----------------------------------------------------------------------------------------------

def torch_backend(run: Run, *, device: str, threads: int, quantize: bool, precision: str | None) -> Scorer:
    model, runtime = ready_model(run, device=device, threads=threads, quantize=quantize, precision=precision)
    kind = "int8" if quantize else runtime.precision
    return Scorer(torch_scorer(model, runtime), "torch",
                  f"torch {kind} on {runtime.device.type}, {runtime.threads} thread(s)")


def ready_model(run: Run, *, device: str, threads: int, quantize: bool = False,
                precision: str | None = None) -> tuple[torch.nn.Module, Runtime]:
    """The run's model for inference and the runtime it runs in: in `precision` (default: the run's), or
    with dynamic int8 weights for the LSTM and the classifier (--quantize, CPU only)."""
    from .model import quantize as quantize_model
    from .runtime import setup

    runtime = setup(device, "fp32" if quantize else precision or run.config.precision, threads)
    model = run.build_model(runtime.device)
    if not quantize:
        return model, runtime
    if runtime.device.type != "cpu":
        raise UserError("--quantize runs on CPU only: add --device cpu.")
    return quantize_model(model), runtime


def torch_scorer(model: torch.nn.Module, runtime: Runtime) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A model in eval mode as a Scorer function (in the runtime's device and precision)."""
    import torch

    from .batching import to_device

    def logits(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), runtime.autocast():
            batch = to_device((torch.from_numpy(ids), torch.from_numpy(lengths)), runtime.device)
            return model(*batch).float().cpu().numpy()

    return logits
