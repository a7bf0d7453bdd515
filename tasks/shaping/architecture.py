"""A model architecture on the wire: a layer spec as JSON, read back with hostile-input checks.

When structured pruning shrinks the global model (:mod:`fedge.tasks.shaping.channel_pruning`),
the server sends the new architecture with the model: the Task's config key
:data:`fedge.protos.model_architecture.ARCHITECTURE_KEY` holds :func:`to_json` of the
pruned :class:`~fedge.tasks.layer_spec.Sequential`. A device reads it with
:func:`from_json` (every field checked: known layer types, integer sizes within
:data:`MAX_CHANNELS`, at most :data:`MAX_LAYERS` layers and :data:`MAX_PARAMETERS`
parameters), and :func:`with_architecture` gives the device's task with that model, so
both runtimes (torch: :func:`~fedge.tasks.layer_spec.to_torch`; numpy: the spec itself)
rebuild the same network under the same state names.

JSON form: ``{"Sequential": [[child name, node], ...]}`` for a Sequential and
``{"Conv2d": {field: value, ...}}`` for a layer (the dataclass fields; pairs as lists).
Hand-written because the spec is fedge's own (no library serialises it); no torch import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from typing import TYPE_CHECKING

from fedge.tasks.base import FederatedTask, TaskData
from fedge.tasks.layer_spec import LAYER_TYPES, Node, Sequential, state_shapes

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Largest channel / feature count a received layer may have.
MAX_CHANNELS = 1 << 16
#: Most layers a received architecture may hold (nested Sequentials included).
MAX_LAYERS = 1024
#: Most parameters a received architecture may describe (a device builds it before any check of the weights).
MAX_PARAMETERS = 50_000_000
#: Longest JSON text accepted, in characters.
MAX_JSON_CHARS = 1 << 20


def _encode(node: Node) -> dict[str, object]:
    if isinstance(node, Sequential):
        return {"Sequential": [[name, _encode(child)] for name, child in node.children]}
    return {type(node).__name__: {f.name: getattr(node, f.name) for f in fields(node)}}


def to_json(spec: Sequential) -> str:
    """The canonical JSON text of ``spec`` (sorted keys, no spaces: equal specs give equal text)."""
    return json.dumps(_encode(spec), sort_keys=True, separators=(",", ":"))


def digest(spec: Sequential) -> str:
    """A short sha256 of :func:`to_json` (16 hex digits), for logs and results."""
    return hashlib.sha256(to_json(spec).encode()).hexdigest()[:16]


def _value(layer: str, key: str, value: object) -> object:
    """A layer argument as the spec holds it: ints (or pairs of ints) within bounds, bools, floats."""
    if isinstance(value, list):
        if len(value) not in (1, 2):
            raise ValueError(f"{layer}.{key}: expected an int or a pair, got a list of {len(value)}")
        return tuple(_value(layer, key, v) for v in value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if not 0 <= value <= MAX_CHANNELS:
            raise ValueError(f"{layer}.{key}={value} is outside [0, {MAX_CHANNELS}]")
        return value
    if isinstance(value, float) and key == "eps" and 0 < value < 1:
        return value
    raise ValueError(f"{layer}.{key}: {type(value).__name__} value {value!r} is not allowed")


def _decode(obj: object, path: str, count: list[int]) -> Node:
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ValueError(f"{path or 'architecture'}: expected one {{type: arguments}} object")
    ((kind, body),) = obj.items()
    count[0] += 1
    if count[0] > MAX_LAYERS:
        raise ValueError(f"architecture has more than {MAX_LAYERS} layers")
    if kind == "Sequential":
        if not isinstance(body, list):
            raise ValueError(f"{path or 'architecture'}: Sequential children must be a list")
        children = []
        for entry in body:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ValueError(f"{path or 'architecture'}: each child must be [name, node]")
            children.append((entry[0], _decode(entry[1], f"{path}.{entry[0]}".lstrip("."), count)))
        return Sequential(tuple(children))
    cls = LAYER_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"{path}: unknown layer type {kind!r} (known: {', '.join(LAYER_TYPES)})")
    if not isinstance(body, dict):
        raise ValueError(f"{path}: {kind} arguments must be an object")
    names = {f.name for f in fields(cls)}
    unknown = set(body) - names
    if unknown:
        raise ValueError(f"{path}: {kind} has no argument(s) {sorted(unknown)}")
    layer: Node = cls(**{k: _value(f"{path}", k, v) for k, v in body.items()})
    return layer


def from_json(text: str | bytes) -> Sequential:
    """The spec :func:`to_json` wrote; ``ValueError`` says what is wrong with untrusted text."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="strict")
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"architecture JSON is {len(text)} characters, above {MAX_JSON_CHARS}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"architecture is not JSON: {exc}") from None
    try:
        spec = _decode(obj, "", [0])
    except TypeError as exc:  # a dataclass missing a required argument
        raise ValueError(f"architecture: {exc}") from None
    if not isinstance(spec, Sequential):
        raise ValueError("architecture must be a Sequential at the top")
    params = sum(_size(shape) for shape in state_shapes(spec).values())
    if params > MAX_PARAMETERS:
        raise ValueError(f"architecture has {params} parameters, above {MAX_PARAMETERS}")
    return spec


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class ArchitectureTask(FederatedTask):
    """``base`` with its model replaced by ``spec`` (data, loss and the rest forwarded).

    Use :func:`with_architecture`: it keeps a task with the default loss free of a ``loss``
    override (the numpy runtime trains only tasks with the default cross-entropy).
    """

    def __init__(self, base: FederatedTask, spec: Sequential) -> None:
        self.base = base
        self.spec = spec
        self.name = base.name
        self.num_classes = base.num_classes
        self.input_shape = base.input_shape

    def load(self) -> TaskData:
        return self.base.load()

    def model_spec(self) -> Sequential:
        return self.spec

    def build_model(self) -> nn.Module:
        from fedge.tasks.layer_spec import to_torch

        return to_torch(self.spec)

    def training_loss(self, logits: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.base.training_loss(logits, target, inputs)

    def begin_round(self, server_round: int) -> None:
        self.base.begin_round(server_round)


class ArchitectureLossTask(ArchitectureTask):
    """:class:`ArchitectureTask` of a base task with its own ``loss``, forwarded."""

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base.loss(logits, target)


def with_architecture(task: FederatedTask, spec: Sequential) -> ArchitectureTask:
    """``task`` (unwrapped if it already is an :class:`ArchitectureTask`) with the model ``spec``."""
    base = task.base if isinstance(task, ArchitectureTask) else task
    own_loss = type(base).loss is not FederatedTask.loss
    return (ArchitectureLossTask if own_loss else ArchitectureTask)(base, spec)
