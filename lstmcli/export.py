"""lstmcli export: a run's model as an ONNX graph that ONNX Runtime runs without torch.

The graph is built from the weights with onnx's helper API rather than traced: one ONNX `LSTM` node
per layer, whose `sequence_lens` input makes the backward direction read each text reversed within its
own length, which is exactly what LSTMClassifier does, and whose batch size and length are dynamic by
construction (the torch exporter has frozen sequence lengths into LSTM graphs: pytorch#191855). The
weights are initializers from the start, so the int8 quantizer finds them and turns each LSTM into
`DynamicQuantizeLSTM`. Before anything is written, the graph is run against the torch model on batches
of several shapes: a model it does not reproduce (a setting this exporter does not know) is refused
rather than exported wrong.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .backends import INPUTS, ONNX_FP32, ONNX_INT8
from .checkpoint import CONFIG, WEIGHTS, Run, atomic_write, load_run, read_tensors, sha256, write_json
from .errors import UserError

OPSET = 17
TOLERANCE = 1e-4  # largest difference in any probability between the graph and the torch model
PROBE_SHAPES = ((1, 1), (2, 5), (7, 23), (16, 64))  # (texts, longest length) of the parity batches ...
LONGEST_PROBE = 2048  # ... and 3 texts as long as the run reads them, up to this (long-text paths show there)
DIRECTION_SUFFIXES = ("", "_reverse")


def export_run(model_dir: str | Path, *, quantize: bool = False, overwrite: bool = False, threads: int = 0) -> dict:
    """Write model.onnx (and model.int8.onnx with `quantize`) into the run directory and record them in
    config.json; returns what was written, the parity with torch, and with `quantize` the accuracy of
    both graphs on the run's validation data."""
    run = load_run(model_dir)
    names = [ONNX_FP32, ONNX_INT8] if quantize else [ONNX_FP32]
    for name in names:
        path = run.directory / name
        entry = run.record.get("exports", {}).get(name, {})
        if path.exists() and not overwrite and sha256(path.read_bytes()) != entry.get("sha256"):
            raise UserError(f"{path} exists and is not an export recorded in {CONFIG}: pass --overwrite to "
                            "replace it.")
    tensors = {k: v.float().numpy() for k, v in read_tensors(
        run.directory / WEIGHTS, run.record["weights"].get(WEIGHTS)).items()}
    graph = build_graph(run, tensors)
    difference = parity(run, graph.SerializeToString())
    files = {ONNX_FP32: graph.SerializeToString()}
    if quantize:
        files[ONNX_INT8] = quantized(graph, run.config.layers)
    exports = run.record.setdefault("exports", {})
    for name, data in files.items():
        atomic_write(run.directory / name, data)
        exports[name] = dict(sha256=sha256(data), weights_sha256=run.record["weights"][WEIGHTS][0], opset=OPSET,
                             inputs=signature(graph.graph.input), outputs=signature(graph.graph.output),
                             lstm="DynamicQuantizeLSTM, int8 weights" if name == ONNX_INT8 else "LSTM, fp32",
                             lstmcli_version=__version__, onnx_version=onnx.__version__)
    exports[ONNX_FP32]["max_probability_difference_to_torch"] = difference
    write_json(run.directory / CONFIG, run.record)
    summary = dict(files={name: len(data) for name, data in files.items()}, max_probability_difference=difference)
    if quantize:
        summary["validation_accuracy"] = exports[ONNX_INT8]["validation_accuracy"] = \
            quantization_accuracy(run.directory, threads)
        write_json(run.directory / CONFIG, run.record)
    return summary


def signature(values) -> list[dict]:
    """Name, element type and shape (symbolic names for the dynamic axes) of graph inputs or outputs."""
    return [dict(name=v.name, dtype=helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 shape=[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]


# -- the graph ----------------------------------------------------------------------------------------------

def build_graph(run: Run, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """input_ids (batch, time) int64 and lengths (batch) int64 -> logits and probabilities (batch, classes)."""
    config = run.config
    directions = 2 if config.bidirectional else 1
    check_known_parameters(tensors, config.layers, directions, config.bias, config.init_state == "learned")
    graph = Graph()
    ids, lengths = segments(graph, config.segment_length) if config.segment_length else ("input_ids", "lengths")
    graph.node("Transpose", [ids], ["ids_by_time"], perm=[1, 0])  # ONNX LSTM runs time-major
    graph.node("Gather", [graph.constant("embedding", tensors["embedding.weight"]), "ids_by_time"], ["x0"])
    graph.node("Cast", [lengths], ["sequence_lens"], to=TensorProto.INT32)
    graph.node("Shape", [ids], ["batch"], start=0, end=1)
    x = "x0"
    for layer in range(config.layers):
        x, last_states = lstm_layer(graph, tensors, layer, directions, config)
    if config.segment_length:
        x = joined_segments(graph, x, directions, config.hidden_size)
    pooled = pool(graph, config.pooling, x, last_states)  # (directions, batch, features)
    graph.node("Transpose", [pooled], ["pooled_by_text"], perm=[1, 0, 2])
    graph.node("Reshape", ["pooled_by_text", graph.constant("flat", np.array([0, -1], np.int64))], ["features"])
    graph.node("MatMul", ["features", graph.constant("classifier_weight", tensors["classifier.weight"].T)],
               ["scores"])
    graph.node("Add", ["scores", graph.constant("classifier_bias", tensors["classifier.bias"])], ["logits"])
    graph.node("Softmax", ["logits"], ["probabilities"], axis=1)
    classes = len(run.labels.names)
    model = helper.make_model(
        helper.make_graph(graph.nodes, "lstmcli", [
            helper.make_tensor_value_info(INPUTS[0], TensorProto.INT64, ["batch", "time"]),
            helper.make_tensor_value_info(INPUTS[1], TensorProto.INT64, ["batch"])], [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
            graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstmcli", producer_version=__version__)
    helper.set_model_props(model, dict(labels=",".join(run.labels.names)))
    onnx.checker.check_model(model)
    return model


class Graph:
    """Nodes and initializers being collected, with unique names for the anonymous ones."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def node(self, op: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, **attributes))

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name


def check_known_parameters(tensors: dict, layers: int, directions: int, bias: bool, learned_state: bool) -> None:
    expected = {"embedding.weight", "classifier.weight", "classifier.bias"}
    for layer in range(layers):
        for suffix in DIRECTION_SUFFIXES[:directions]:
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
            expected |= {f"lstm.{name}_l{layer}{suffix}" for name in names}
    expected |= {"h0", "c0"} if learned_state else set()
    if set(tensors) != expected:
        raise UserError(f"export does not know this model's parameters ({sorted(set(tensors) ^ expected)[:4]}): "
                        "this lstmcli cannot export it; use --backend torch.")


def onnx_gates(weight: np.ndarray) -> np.ndarray:
    """torch orders an LSTM's gate rows input, forget, cell, output; ONNX input, output, forget, cell."""
    i, f, g, o = np.split(weight, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def lstm_layer(graph: Graph, tensors: dict, layer: int, directions: int, config) -> tuple[str, str]:
    """One ONNX LSTM node for both directions of `layer`; returns the next layer's input (time, batch,
    directions * hidden) and the final states (directions, batch, hidden)."""
    suffixes = DIRECTION_SUFFIXES[:directions]

    def stacked(name: str) -> np.ndarray:
        return np.stack([onnx_gates(tensors[f"lstm.{name}_l{layer}{s}"]) for s in suffixes])

    inputs = [f"x{layer}", graph.constant(f"W{layer}", stacked("weight_ih")),
              graph.constant(f"R{layer}", stacked("weight_hh"))]
    inputs.append(graph.constant(f"B{layer}", np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1))
                  if config.bias else "")
    inputs.append("sequence_lens")
    if config.init_state == "learned":  # (layers * directions, 1, hidden) parameters, broadcast over the batch
        graph.node("Concat", [graph.constant(f"state_shape_head{layer}", np.array([directions], np.int64)), "batch",
                              graph.constant(f"state_shape_tail{layer}", np.array([config.hidden_size], np.int64))],
                   [f"state_shape{layer}"], axis=0)
        rows = slice(layer * directions, (layer + 1) * directions)
        for state in ("h0", "c0"):
            graph.node("Expand", [graph.constant(f"{state}_l{layer}", tensors[state][rows]), f"state_shape{layer}"],
                       [f"{state}_expanded{layer}"])
            inputs.append(f"{state}_expanded{layer}")
    graph.node("LSTM", inputs, [f"Y{layer}", f"Y_h{layer}"], hidden_size=config.hidden_size,
               direction="bidirectional" if directions == 2 else "forward")
    if layer == config.layers - 1:
        return f"Y{layer}", f"Y_h{layer}"
    # (time, directions, batch, hidden) -> (time, batch, directions * hidden): forward and backward side by
    # side at each position, as nn.LSTM feeds the next layer
    graph.node("Transpose", [f"Y{layer}"], [f"Y{layer}_by_batch"], perm=[0, 2, 1, 3])
    graph.node("Reshape", [f"Y{layer}_by_batch", graph.constant(f"merge{layer}", np.array([0, 0, -1], np.int64))],
               [f"x{layer + 1}"])
    return f"x{layer + 1}", f"Y_h{layer}"


def segments(graph: Graph, length: int) -> tuple[str, str]:
    """model.segments on the token ids: (batch * segments, width) ids and each segment's own length, cut at
    multiples of `length` (width = min(time, length))."""
    constant = graph.constant
    graph.node("Shape", ["input_ids"], ["text_width"], start=1, end=2)
    graph.node("Min", ["text_width", constant("segment_length", np.array([length], np.int64))], ["segment_width"])
    graph.node("Sub", ["segment_width", constant("segment_one", np.array([1], np.int64))], ["segment_width_less_one"])
    graph.node("Add", ["text_width", "segment_width_less_one"], ["text_width_rounded_up"])
    graph.node("Div", ["text_width_rounded_up", "segment_width"], ["segment_count"])
    graph.node("Mul", ["segment_count", "segment_width"], ["segmented_width"])
    graph.node("Sub", ["segmented_width", "text_width"], ["segment_padding"])
    graph.node("Concat", [constant("segment_no_padding", np.array([0, 0, 0], np.int64)), "segment_padding"],
               ["segment_pads"], axis=0)
    graph.node("Pad", ["input_ids", "segment_pads"], ["padded_ids"])
    graph.node("Concat", [constant("segment_rows", np.array([-1], np.int64)), "segment_width"], ["segment_shape"],
               axis=0)
    graph.node("Reshape", ["padded_ids", "segment_shape"], ["segment_ids"])
    graph.node("Squeeze", ["segment_count"], ["segment_count_scalar"])
    graph.node("Range", [constant("segment_zero", np.array(0, np.int64)), "segment_count_scalar",
                         constant("segment_step", np.array(1, np.int64))], ["segment_numbers"])
    graph.node("Mul", ["segment_numbers", "segment_width"], ["segment_starts"])
    graph.node("Unsqueeze", ["lengths", constant("segment_length_axes", np.array([1], np.int64))],
               ["text_lengths"])
    graph.node("Sub", ["text_lengths", "segment_starts"], ["left_from_start"])  # (batch, segments)
    graph.node("Max", ["left_from_start", constant("segment_floor", np.array(0, np.int64))], ["left_or_zero"])
    graph.node("Min", ["left_or_zero", "segment_width"], ["segment_lengths_by_text"])
    graph.node("Reshape", ["segment_lengths_by_text", constant("segment_flat", np.array([-1], np.int64))],
               ["segment_lengths"])
    return "segment_ids", "segment_lengths"


def joined_segments(graph: Graph, outputs: str, directions: int, hidden: int) -> str:
    """The top layer's outputs (width, directions, batch * segments, hidden) back to one row per text:
    (segments * width, directions, batch, hidden), segment k's position j at k * width + j."""
    graph.node("Transpose", [outputs], ["segment_outputs"], perm=[2, 0, 1, 3])
    graph.node("Shape", ["input_ids"], ["texts"], start=0, end=1)
    graph.node("Concat", ["texts", graph.constant("joined_tail", np.array([-1, directions, hidden], np.int64))],
               ["joined_shape"], axis=0)
    graph.node("Reshape", ["segment_outputs", "joined_shape"], ["joined_by_text"])
    graph.node("Transpose", ["joined_by_text"], ["joined"], perm=[1, 2, 0, 3])
    return "joined"


def pool(graph: Graph, pooling: str, outputs: str, last_states: str) -> str:
    """The top layer's outputs (time, directions, batch, hidden) pooled over each text's own positions."""
    if pooling == "last":  # the state after each direction has read the whole text
        return last_states
    graph.node("Shape", [outputs], ["time"], start=0, end=1)
    graph.node("Squeeze", ["time"], ["time_scalar"])
    graph.node("Range", [graph.constant("zero", np.array(0, np.int64)), "time_scalar",
                         graph.constant("one", np.array(1, np.int64))], ["steps"])
    graph.node("Unsqueeze", ["steps", graph.constant("steps_axes", np.array([1], np.int64))], ["steps_column"])
    graph.node("Less", ["steps_column", "lengths"], ["inside"])  # (time, batch)
    graph.node("Unsqueeze", ["inside", graph.constant("inside_axes", np.array([1, 3], np.int64))], ["mask"])
    parts = []
    if pooling in ("mean", "mean-max"):
        graph.node("Where", ["mask", outputs, graph.constant("zero_float", np.array(0, np.float32))], ["kept"])
        graph.node("ReduceSum", ["kept", graph.constant("time_axis", np.array([0], np.int64))], ["summed"],
                   keepdims=0)
        graph.node("Cast", ["lengths"], ["lengths_float"], to=TensorProto.FLOAT)
        graph.node("Unsqueeze", ["lengths_float", graph.constant("length_axes", np.array([0, 2], np.int64))],
                   ["divisor"])
        graph.node("Div", ["summed", "divisor"], ["mean"])
        parts.append("mean")
    if pooling in ("max", "mean-max"):
        graph.node("Where", ["mask", outputs, graph.constant("minus_inf", np.array(-np.inf, np.float32))],
                   ["floored"])
        graph.node("ReduceMax", ["floored"], ["max"], axes=[0], keepdims=0)
        parts.append("max")
    if len(parts) == 1:
        return parts[0]
    graph.node("Concat", parts, ["mean_max"], axis=2)  # per direction [mean, max], as LSTMClassifier._pool
    return "mean_max"


# -- checks -------------------------------------------------------------------------------------------------

def parity(run: Run, graph: bytes) -> float:
    """Largest probability difference between the graph (ONNX Runtime) and the torch model on random batches
    of several shapes and mixed lengths; refuses the export above TOLERANCE."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    model = run.build_model("cpu")
    rng = np.random.default_rng(0)
    worst = 0.0
    for texts, width in (*PROBE_SHAPES, (3, LONGEST_PROBE)):
        width = min(width, run.config.max_length)
        lengths = rng.integers(1, width + 1, texts)
        lengths[0] = width
        ids = np.where(np.arange(width)[None, :] < lengths[:, None],
                       rng.integers(1, run.record["vocab_size"], (texts, width)), 0).astype(np.int64)
        ours = session.run(["probabilities"], dict(zip(INPUTS, (ids, lengths.astype(np.int64)))))[0]
        with torch.inference_mode():
            theirs = torch.softmax(model(torch.from_numpy(ids), torch.from_numpy(lengths)), dim=1).numpy()
        worst = max(worst, float(np.abs(ours - theirs).max()))
    if not worst <= TOLERANCE:
        raise UserError(f"the ONNX graph differs from the torch model by {worst:.2g} in probability (more than "
                        f"{TOLERANCE:g}): this model's settings are not supported by export; use --backend torch.")
    return worst


def quantized(graph: onnx.ModelProto, layers: int) -> bytes:
    """The graph with dynamic int8 LSTM and classifier weights; refuses a result whose LSTMs stayed fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="lstmcli-quantize-") as folder:
        output = Path(folder) / ONNX_INT8
        logging.disable(logging.WARNING)  # its advice to pre-process (fold constants) is moot: all are initializers
        try:
            quantize_dynamic(graph, output, op_types_to_quantize=["LSTM", "MatMul"], weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        data = output.read_bytes()
    found = sum(node.op_type == "DynamicQuantizeLSTM" for node in onnx.load_from_string(data).graph.node)
    if found != layers:
        raise UserError(f"quantization turned {found} of {layers} LSTM layers into DynamicQuantizeLSTM: the int8 "
                        "model would be no faster; use the fp32 export.")
    return data


def quantization_accuracy(model_dir: Path, threads: int) -> dict:
    """Accuracy of the fp32 and int8 graphs on the run's validation data (never its test split)."""
    from .evaluate import evaluate_run

    try:
        fp32, int8 = (evaluate_run(model_dir, validation=True, backend="onnx", quantize=q, threads=threads)
                      for q in (False, True))
    except UserError as e:
        return dict(error=f"not measured: {e}")
    return dict(split=fp32["split"], examples=fp32["num_examples"], fp32=fp32["accuracy"], int8=int8["accuracy"],
                change_points=round(100 * (int8["accuracy"] - fp32["accuracy"]), 2))

