"""Build the ONNX files: fp32 from torch, int8 QDQ from the QAT steps or by static quantisation.

* :func:`export_fp32`: ``torch.onnx.export`` (the torch.export-based exporter, opset 20,
  a dynamic batch axis). Conv and Gemm weights keep their state-dict names.
* :func:`qdq_from_steps`: the graph QAT trained, written out. For every Conv/Gemm node
  whose weight is ``<layer>.weight``: the weight is stored as int8, symmetric per tensor
  with the learned LSQ weight step (``clamp(round(w / s_w), qmin, qmax)``, ``qmin, qmax``
  of ``client.qat.bits``; with 4 bits or fewer the tensor is ONNX INT4, two values a
  byte, opset 21), followed by a DequantizeLinear; the node's input goes through QuantizeLinear/DequantizeLinear with
  the learned input step (int8, zero point 0). That is the fake-quantised forward pass
  of :class:`fedge.client.qat.LSQModel`, so the int8 file computes what the federation
  trained. Two additions let ONNX Runtime run int8 kernels (QLinearConv, QGemm) without
  changing that: biases as int32 with scale ``input step * weight step`` (the QDQ
  convention; an error below half that scale), and a layer's output quantised with the
  next layer's input step where only quantisation-commuting ops (ReLU, max pooling,
  reshapes) lie between (:func:`_quantise_outputs`). Written by hand because ONNX Runtime's quantiser calibrates its
  own scales: its ``TensorQuantOverrides`` can pin a tensor's scale, but it also
  quantises every other tensor (conv outputs, pooling) with calibrated ranges, which is
  not the model QAT trained.
* :func:`quantise_static`: no QAT: ONNX Runtime's ``quantize_static`` (QDQ format, int8
  weights and activations, MinMax calibration on examples the caller passes: the task's
  training data).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

#: ONNX opset of the exported files; files with 4-bit weights (INT4 tensors) use opset 21.
OPSET, INT4_OPSET = 20, 21
INPUT, OUTPUT = "input", "logits"
QUANTISED_OPS = ("Conv", "Gemm")
#: torch's exporter warns once per torchvision op when torchvision is absent; fedge models use none.
_TORCH_REGISTRY_LOG = "torch.onnx._internal.exporter._registration"


def export_fp32(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """Write ``model`` (eval mode, float32) to ``path``: input ``(batch, *input_shape)``, output logits."""
    model = model.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    registry_log = logging.getLogger(_TORCH_REGISTRY_LOG)
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, not ours
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT],
                output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        registry_log.setLevel(level)
    if program is None:  # torch returns None only for the legacy (dynamo=False) exporter
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    _strip(model)
    onnx.save(model, str(path))
    return path


def _strip(model: onnx.ModelProto) -> None:
    """Drop what inference does not need: the exporter's per-node metadata (source stack traces) and value_info."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]


def qdq_from_steps(fp32_path: Path, steps: Mapping[str, float], weight_bits: int, act_bits: int, path: Path) -> Path:
    """Write the int8 QDQ graph of the fp32 file at ``fp32_path`` with LSQ ``steps`` (``<layer>.weight``/``.input``)."""
    if act_bits != 8:
        raise ValueError(f"int8 export needs 8-bit activations (client.qat.act_bits=8), the run used {act_bits}")
    if not 2 <= weight_bits <= 8:
        raise ValueError(f"weight bits must be in [2, 8], got {weight_bits}")
    model = onnx.load(str(fp32_path))
    graph = model.graph
    initialisers = {t.name: t for t in graph.initializer}
    qmin, qmax = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
    used: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type in QUANTISED_OPS and len(node.input) > 1 and node.input[1].endswith(".weight"):
            layer = node.input[1][: -len(".weight")]
            w_step, x_step = _step(steps, f"{layer}.weight"), _step(steps, f"{layer}.input")
            used |= {f"{layer}.weight", f"{layer}.input"}
            weight = numpy_helper.to_array(initialisers.pop(node.input[1]))
            q = np.clip(np.round(weight * np.float32(1 / w_step)), qmin, qmax).astype(np.int8)
            graph.initializer.remove(next(t for t in graph.initializer if t.name == node.input[1]))
            graph.initializer.extend([
                *_int_weights(q, layer, packed=weight_bits <= 4),
                numpy_helper.from_array(np.array(w_step, np.float32), f"{layer}.weight_scale"),
                numpy_helper.from_array(np.array(x_step, np.float32), f"{layer}.input_scale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{layer}.input_zero_point"),
            ])
            x = node.input[0]
            nodes += [
                helper.make_node("DequantizeLinear", [f"{layer}.weight_quantized", f"{layer}.weight_scale", f"{layer}.weight_zero_point"],
                                 [f"{layer}.weight_dequantized"], name=f"{layer}.weight_DequantizeLinear"),
                helper.make_node("QuantizeLinear", [x, f"{layer}.input_scale", f"{layer}.input_zero_point"],
                                 [f"{layer}.input_quantized"], name=f"{layer}.input_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{layer}.input_quantized", f"{layer}.input_scale", f"{layer}.input_zero_point"],
                                 [f"{layer}.input_dequantized"], name=f"{layer}.input_DequantizeLinear"),
            ]
            node.input[0], node.input[1] = f"{layer}.input_dequantized", f"{layer}.weight_dequantized"
        nodes.append(node)
    unused = sorted(set(steps) - used)
    if unused:
        raise ValueError(f"LSQ steps for layers that are not Conv/Gemm weights of the exported graph: {unused}")
    del graph.node[:]
    graph.node.extend(nodes)
    _quantise_biases(graph, steps)
    _quantise_outputs(graph)
    if weight_bits <= 4:  # INT4 tensors need opset 21 (its ops here are supersets of opset 20's)
        next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = INT4_OPSET
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


#: Ops between a quantised layer's output and the next quantised input that commute with
#: symmetric quantisation (zero point 0): ``q(relu(y)) = relu(q(y))``, ``q(maxpool(y)) = maxpool(q(y))``.
COMMUTING_OPS = ("Relu", "MaxPool", "Flatten", "Reshape")


def _quantise_biases(graph: onnx.GraphProto, steps: Mapping[str, float]) -> None:
    """Biases of the quantised layers as int32 with scale ``input step * weight step`` (the QDQ convention)."""
    initialisers = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    for node in nodes:
        if node.op_type not in QUANTISED_OPS or len(node.input) < 3 or not node.input[1].endswith(".weight_dequantized"):
            continue
        layer = node.input[1][: -len(".weight_dequantized")]
        bias = initialisers.get(node.input[2])
        if bias is None:
            continue
        scale = np.float32(steps[f"{layer}.input"]) * np.float32(steps[f"{layer}.weight"])
        q = np.round(numpy_helper.to_array(bias) / scale).astype(np.int32)
        graph.initializer.remove(bias)
        graph.initializer.extend([
            numpy_helper.from_array(q, f"{layer}.bias_quantized"),
            numpy_helper.from_array(np.array(scale, np.float32), f"{layer}.bias_scale"),
            numpy_helper.from_array(np.array(0, np.int32), f"{layer}.bias_zero_point"),
        ])
        graph.node.insert(list(graph.node).index(node), helper.make_node(
            "DequantizeLinear", [f"{layer}.bias_quantized", f"{layer}.bias_scale", f"{layer}.bias_zero_point"],
            [f"{layer}.bias_dequantized"], name=f"{layer}.bias_DequantizeLinear"))
        node.input[2] = f"{layer}.bias_dequantized"


def _quantise_outputs(graph: onnx.GraphProto) -> None:
    """Quantise a layer's output with the next layer's input step where that changes nothing.

    When a Conv/Gemm output reaches the next quantised input only through
    :data:`COMMUTING_OPS` (one consumer each), quantising it right away with that
    input's step gives the same values (quantising twice with one step is quantising
    once), and ONNX Runtime can then run the layer as an int8 kernel (QLinearConv, QGemm).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type not in QUANTISED_OPS or not node.input[1].endswith(".weight_dequantized"):
            continue
        tensor = node.output[0]
        while tensor not in outputs and len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in COMMUTING_OPS \
                and consumers[tensor][0].input[0] == tensor:
            tensor = consumers[tensor][0].output[0]
        after = consumers.get(tensor, [])
        if tensor in outputs or len(after) != 1 or after[0].op_type != "QuantizeLinear" or not after[0].name.endswith(".input_QuantizeLinear"):
            continue
        scale, zero_point = after[0].input[1], after[0].input[2]
        out, raw = node.output[0], node.output[0] + "_float"
        node.output[0] = raw
        at = list(graph.node).index(node) + 1
        graph.node.insert(at, helper.make_node("QuantizeLinear", [raw, scale, zero_point], [out + "_quantized"], name=out + "_QuantizeLinear"))
        graph.node.insert(at + 1, helper.make_node("DequantizeLinear", [out + "_quantized", scale, zero_point], [out], name=out + "_DequantizeLinear"))


def _int_weights(q: np.ndarray, layer: str, packed: bool) -> list[onnx.TensorProto]:
    """The quantised weight and its zero point: int8, or INT4 (two values a byte) when ``packed``."""
    if not packed:
        return [numpy_helper.from_array(q, f"{layer}.weight_quantized"),
                numpy_helper.from_array(np.array(0, np.int8), f"{layer}.weight_zero_point")]
    nibbles = (q.flatten().astype(np.uint8) & 0x0F)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    pairs = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)  # ONNX: first element in the low 4 bits
    return [helper.make_tensor(f"{layer}.weight_quantized", onnx.TensorProto.INT4, q.shape, pairs.tobytes(), raw=True),
            helper.make_tensor(f"{layer}.weight_zero_point", onnx.TensorProto.INT4, [], np.zeros(1, np.uint8).tobytes(), raw=True)]


def _step(steps: Mapping[str, float], key: str) -> float:
    if key not in steps:
        raise ValueError(f"no LSQ step {key!r} for a quantised layer of the graph (steps hold {sorted(steps)[:4]}...)")
    value = float(steps[key])
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"LSQ step {key!r} must be a finite number > 0, got {value}")
    return value


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over an array of examples, in batches."""

    def __init__(self, x: np.ndarray, batch: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = iter([x[i : i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch, dtype=np.float32)}


def quantise_static(fp32_path: Path, calibration_x: np.ndarray, path: Path) -> Path:
    """Write ONNX Runtime's static int8 QDQ quantisation of ``fp32_path``, calibrated on ``calibration_x``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_x) == 0:
        raise ValueError("static quantisation needs calibration examples, got none")
    prepared = path.with_name(path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(path), _Calibration(calibration_x),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return path


def graph_ops(path: Path) -> dict[str, int]:
    """How many nodes of each op type the file at ``path`` has."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


__all__ = ["OPSET", "INT4_OPSET", "INPUT", "OUTPUT", "export_fp32", "qdq_from_steps", "quantise_static", "graph_ops"]
