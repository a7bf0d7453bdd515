"""A numpy network built from a task's layer spec: forward, backward, checkpointing.

:class:`NumpyNetwork` holds the model's tensors by their state names (exactly the torch
module's, so the wire and the server see no difference) and runs the spec's layers
(:mod:`fedge.client.numpy_runtime.layers`) in order. One training pass
(:meth:`NumpyNetwork.loss_and_grads`) is forward, softmax cross-entropy, backward; it
returns the gradients of the tensors that train.

Gradient checkpointing cuts the top-level children into segments exactly as
``torch.utils.checkpoint.checkpoint_sequential`` does (``len // segments`` children per
segment, the last segment takes the rest and is not checkpointed): a checkpointed
segment keeps only its input during the forward pass and runs its forward again,
keeping caches this time, when the backward pass reaches it. The arithmetic is the
same, so the gradients are identical; only the bytes kept differ
(:class:`~fedge.client.numpy_runtime.memory.CacheMeter` counts them).

With QAT (:class:`~fedge.client.numpy_runtime.lsq.NumpyLSQ`), each quantised layer's
input and weight go through the LSQ fake quantiser, also when a checkpointed segment
is recomputed, and the steps' gradients are collected by the quantiser object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedge.client.numpy_runtime.layers import Cache, NumpyLayer, build_layer
from fedge.client.numpy_runtime.memory import CacheMeter
from fedge.tasks import layer_spec as spec

if TYPE_CHECKING:
    from fedge.client.numpy_runtime.lsq import NumpyLSQ


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``(N, K)`` logits against ``(N,)`` labels, and its gradient ``(N, K)``."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(total)
    n = len(labels)
    loss = -float(log_probs[np.arange(n), labels].mean())
    grad = exp / total
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy only (evaluation)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -float(log_probs[np.arange(len(labels)), labels].mean())


@dataclass
class _Step:
    """One layer as the forward pass ran it: what its backward pass needs."""

    path: str
    layer: NumpyLayer
    cache: Cache
    params: dict[str, np.ndarray]  # what the forward pass used (fake-quantised weight under QAT)
    quant: tuple | None = None  # (input cache, weight cache) of the LSQ quantisers


@dataclass
class _Segment:
    """A checkpointed run of layers: only its input is kept."""

    layers: list[tuple[str, NumpyLayer]]
    x: np.ndarray


def _init_tensor(name: str, shape: tuple[int, ...], fan_in: int, rng: np.random.Generator) -> np.ndarray:
    """torch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for conv/linear
    weights and biases (kaiming_uniform with a=sqrt(5)); GroupNorm weight 1, bias 0."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


class NumpyNetwork:
    """A spec'd model in numpy: tensors by state name, forward and backward passes.

    ``dtype``: float32 on devices (what the wire carries); float64 for exact parity checks.
    ``seed``: the initial weights (torch's default initialisation scheme, numpy's generator;
    a federation overwrites them with the global model at the first round).
    """

    def __init__(self, model: spec.Sequential, dtype: type = np.float32, seed: int = 0) -> None:
        self.spec = model
        self.dtype = np.dtype(dtype)
        self.chunks: list[list[tuple[str, NumpyLayer]]] = []
        for name, child in model.children:
            if isinstance(child, spec.Sequential):
                self.chunks.append([(f"{name}.{path}", build_layer(layer)) for path, layer in child.layers()])
            else:
                self.chunks.append([(name, build_layer(child))])
        rng = np.random.default_rng(seed)
        self.tensors: dict[str, np.ndarray] = {}
        self._by_layer: dict[str, dict[str, str]] = {}
        for path, layer in model.layers():
            shapes = spec.tensor_shapes(layer)
            local = {}
            for key, shape in shapes.items():
                if isinstance(layer, spec.GroupNorm):
                    value = np.full(shape, 1.0 if key == "weight" else 0.0)
                else:
                    value = _init_tensor(key, shape, int(np.prod(shapes["weight"][1:])), rng)
                self.tensors[f"{path}.{key}"] = value.astype(self.dtype)
                local[key] = f"{path}.{key}"
            self._by_layer[path] = local
        self.quantised = [p for p, layer in model.layers() if isinstance(layer, (spec.Conv1d, spec.Conv2d, spec.Linear))]
        self.first_layer = next(path for path, _ in model.layers())

    # -- state ----------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Copies of the tensors by state name (the ``model_arrays`` of the torch runtime)."""
        return {k: v.copy() for k, v in self.tensors.items()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Set the tensors (names and shapes must match exactly); values are cast to ``dtype``."""
        if set(arrays) != set(self.tensors):
            missing, extra = sorted(set(self.tensors) - set(arrays)), sorted(set(arrays) - set(self.tensors))
            raise ValueError(f"model state does not match: missing {missing}, unexpected {extra}")
        for name, value in arrays.items():
            if value.shape != self.tensors[name].shape:
                raise ValueError(f"{name}: shape {value.shape}, the model has {self.tensors[name].shape}")
        for name, value in arrays.items():
            self.tensors[name][...] = value

    def _params(self, path: str) -> dict[str, np.ndarray]:
        return {k: self.tensors[full] for k, full in self._by_layer[path].items()}

    # -- passes ---------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` of a batch, nothing kept."""
        x = np.asarray(x, dtype=self.dtype)
        for chunk in self.chunks:
            for path, layer in chunk:
                x, _ = layer.forward(x, self._params(path))
        return x

    def _run(self, layers: Sequence[tuple[str, NumpyLayer]], x: np.ndarray, tape: list | None,
             meter: CacheMeter | None, quant: NumpyLSQ | None) -> np.ndarray:
        for path, layer in layers:
            params = self._params(path)
            qcaches = None
            if quant is not None and path in self.quantised:
                x, in_cache = quant.quantise(f"{path}.input", x)
                params["weight"], w_cache = quant.quantise(f"{path}.weight", params["weight"])
                qcaches = (in_cache, w_cache)
            y, cache = layer.forward(x, params)
            if tape is not None:
                tape.append(_Step(path, layer, cache, params, qcaches))
                if meter is not None:
                    meter.keep(cache)
                    if qcaches is not None:
                        meter.keep(qcaches[0] + qcaches[1] + (params["weight"],))
            x = y
        return x

    def _back(self, steps: list[_Step], dy: np.ndarray, grads: dict[str, np.ndarray], trainable: set[str],
              meter: CacheMeter | None, quant: NumpyLSQ | None) -> np.ndarray:
        for step in reversed(steps):
            first = step.path == self.first_layer and step.quant is None  # dL/d(batch) is not needed
            dx, local = step.layer.backward(dy, step.cache, step.params, need_dx=not first)
            if step.quant is not None and quant is not None:
                in_cache, w_cache = step.quant
                if "weight" in local:
                    local["weight"] = quant.backward(f"{step.path}.weight", local["weight"], w_cache)
                dx = quant.backward(f"{step.path}.input", dx if dx is not None else np.zeros_like(in_cache[0]), in_cache)
                if meter is not None:
                    meter.release(in_cache + w_cache + (step.params["weight"],))
            for key, grad in local.items():
                name = self._by_layer[step.path][key]
                if name in trainable:
                    grads[name] = grad
            if meter is not None:
                meter.release(step.cache)
            if dx is None:
                break
            dy = dx
        return dy

    def loss_and_grads(
        self,
        x: np.ndarray,
        y: np.ndarray,
        trainable: set[str],
        meter: CacheMeter | None = None,
        checkpoint_segments: int = 0,
        quant: NumpyLSQ | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of one batch and the gradients of the ``trainable`` tensors.

        ``checkpoint_segments`` > 0 checkpoints like ``checkpoint_sequential(model, segments)``
        (must be in ``[1, len(top-level children)]``); 0 keeps every cache.
        """
        x = np.asarray(x, dtype=self.dtype)
        tape: list[_Segment] = []
        checkpointed = 0
        if checkpoint_segments:
            if not 1 <= checkpoint_segments <= len(self.chunks):
                raise ValueError(
                    f"client.checkpoint_segments must be in [1, {len(self.chunks)}] for this model, got {checkpoint_segments}"
                )
            size = len(self.chunks) // checkpoint_segments
            for start in range(0, size * (checkpoint_segments - 1), size):
                layers = [layer for chunk in self.chunks[start : start + size] for layer in chunk]
                segment = _Segment(layers, x)
                if meter is not None:
                    meter.keep((x,))
                x = self._run(layers, x, None, None, quant)
                tape.append(segment)
                checkpointed = start + size
        steps: list[_Step] = []
        rest = [layer for chunk in self.chunks[checkpointed:] for layer in chunk]
        logits = self._run(rest, x, steps, meter, quant)
        loss, dy = softmax_cross_entropy(logits, y)
        grads: dict[str, np.ndarray] = {}
        dy = self._back(steps, dy, grads, trainable, meter, quant)
        for segment in reversed(tape):
            recomputed: list[_Step] = []
            self._run(segment.layers, segment.x, recomputed, meter, quant)
            dy = self._back(recomputed, dy, grads, trainable, meter, quant)
            if meter is not None:
                meter.release((segment.x,))
        return loss, grads
