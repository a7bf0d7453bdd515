"""A model as data: a typed, frozen description of a sequential network.

A task declares its model once as a :class:`Sequential` spec (``task.model_spec()``);
both device runtimes are built from it: :func:`to_torch` gives the ``nn.Module`` the
torch runtime, the server and ``fedge-export`` use, and ``fedge.client.numpy_runtime``
builds a numpy network with the same state names, tensor shapes and arithmetic, so
torch and numpy devices join one federation and the server cannot tell them apart.

The spec mirrors torch's layers one to one (same class names, same arguments, same
defaults) so the state names are exactly torch's: a layer's tensors are named by its
path of child names in nested ``Sequential`` s (``features.0.weight``). Only what the
numpy runtime implements by hand can be described; :func:`from_torch` reads a user's
``nn.Sequential`` tree back into a spec and names the first layer it cannot describe.

Written by hand because no library describes a torch model without importing torch
(ONNX needs torch to export and onnx to read); this module imports no torch at import
time, so a torch-free device can read a task's model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from torch import nn


class UnsupportedLayerError(ValueError):
    """A model holds a layer the spec (and so the numpy runtime) cannot describe."""


def as_pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


def as_single(value: int | tuple[int, ...]) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 1:
        raise ValueError(f"expected an int, got {value!r}")
    return int(value[0])


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution, ``(N, in_channels, H, W) -> (N, out_channels, H', W')``; zero padding.

    ``groups = in_channels = out_channels`` is a depthwise convolution.
    Tensors: ``weight`` ``(out, in / groups, kh, kw)``, ``bias`` ``(out,)``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    groups: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        _check_conv(self.in_channels, self.out_channels, self.groups)


@dataclass(frozen=True)
class Conv1d:
    """1-D convolution, ``(N, in_channels, T) -> (N, out_channels, T')``; zero padding.

    Tensors: ``weight`` ``(out, in / groups, k)``, ``bias`` ``(out,)``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True

    def __post_init__(self) -> None:
        _check_conv(self.in_channels, self.out_channels, self.groups)


def _check_conv(c_in: int, c_out: int, groups: int) -> None:
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide in_channels={c_in} and out_channels={c_out}")


@dataclass(frozen=True)
class Linear:
    """``(N, in_features) -> (N, out_features)``; ``weight`` ``(out, in)``, ``bias`` ``(out,)``."""

    in_features: int
    out_features: int
    bias: bool = True


@dataclass(frozen=True)
class ReLU:
    """``max(x, 0)``, any shape."""


@dataclass(frozen=True)
class ReLU6:
    """``min(max(x, 0), 6)``, any shape."""


@dataclass(frozen=True)
class MaxPool2d:
    """Max over ``kernel_size`` windows every ``stride`` (default: the kernel), no padding, floor mode."""

    kernel_size: int | tuple[int, int]
    stride: int | tuple[int, int] | None = None


@dataclass(frozen=True)
class MaxPool1d:
    """Max over ``kernel_size`` steps every ``stride`` (default: the kernel), no padding, floor mode."""

    kernel_size: int
    stride: int | None = None


@dataclass(frozen=True)
class AdaptiveAvgPool2d:
    """Global average pooling: ``(N, C, H, W) -> (N, C, 1, 1)`` (only ``output_size=1``)."""

    output_size: int = 1

    def __post_init__(self) -> None:
        if as_pair(self.output_size) != (1, 1):
            raise UnsupportedLayerError(f"AdaptiveAvgPool2d({self.output_size}): only output_size=1 is supported")


@dataclass(frozen=True)
class AdaptiveAvgPool1d:
    """Global average pooling: ``(N, C, T) -> (N, C, 1)`` (only ``output_size=1``)."""

    output_size: int = 1

    def __post_init__(self) -> None:
        if as_single(self.output_size) != 1:
            raise UnsupportedLayerError(f"AdaptiveAvgPool1d({self.output_size}): only output_size=1 is supported")


@dataclass(frozen=True)
class Flatten:
    """``(N, ...) -> (N, prod(...))`` (only ``start_dim=1, end_dim=-1``)."""


@dataclass(frozen=True)
class GroupNorm:
    """Group normalisation over ``num_groups`` channel groups; ``weight``, ``bias`` ``(num_channels,)``."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.num_channels % self.num_groups:
            raise ValueError(f"num_groups={self.num_groups} must divide num_channels={self.num_channels}")


Layer = Union[Conv2d, Conv1d, Linear, ReLU, ReLU6, MaxPool2d, MaxPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool1d, Flatten, GroupNorm]
#: The layer types a spec (and the numpy runtime) supports, by torch class name.
LAYER_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Conv2d, Conv1d, Linear, ReLU, ReLU6, MaxPool2d, MaxPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool1d, Flatten, GroupNorm)
}


@dataclass(frozen=True)
class Sequential:
    """Children run in order; each is a layer or a nested ``Sequential``, under its name.

    ``Sequential.of(a, b)`` numbers the children ``"0"``, ``"1"`` like ``nn.Sequential(a, b)``;
    ``Sequential.named(features=..., classifier=...)`` names them like
    ``nn.Sequential(OrderedDict(...))`` or a module's attributes.
    """

    children: tuple[tuple[str, Node], ...]

    def __post_init__(self) -> None:
        names = [n for n, _ in self.children]
        if len(set(names)) != len(names) or any(not n or "." in n for n in names):
            raise ValueError(f"child names must be unique, non-empty and without dots, got {names}")
        for name, child in self.children:
            if not isinstance(child, (Sequential, *LAYER_TYPES.values())):
                raise UnsupportedLayerError(f"child {name!r} is {type(child).__name__}, not a layer spec")

    @classmethod
    def of(cls, *children: Node) -> Sequential:
        return cls(tuple((str(i), c) for i, c in enumerate(children)))

    @classmethod
    def named(cls, **children: Node) -> Sequential:
        return cls(tuple(children.items()))

    def __len__(self) -> int:
        return len(self.children)

    def layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """Every layer, depth first, with its dotted path (the prefix of its state names)."""
        for name, child in self.children:
            path = f"{prefix}{name}"
            if isinstance(child, Sequential):
                yield from child.layers(path + ".")
            else:
                yield path, child


Node = Union[Layer, Sequential]


def tensor_shapes(layer: Layer) -> dict[str, tuple[int, ...]]:
    """A layer's trainable tensors by local name (``weight``, ``bias``) and their shapes, in torch's order."""
    if isinstance(layer, (Conv2d, Conv1d)):
        kernel = as_pair(layer.kernel_size) if isinstance(layer, Conv2d) else (layer.kernel_size,)
        shapes = {"weight": (layer.out_channels, layer.in_channels // layer.groups, *kernel)}
        return shapes | ({"bias": (layer.out_channels,)} if layer.bias else {})
    if isinstance(layer, Linear):
        shapes = {"weight": (layer.out_features, layer.in_features)}
        return shapes | ({"bias": (layer.out_features,)} if layer.bias else {})
    if isinstance(layer, GroupNorm) and layer.affine:
        return {"weight": (layer.num_channels,), "bias": (layer.num_channels,)}
    return {}


def state_shapes(spec: Sequential) -> dict[str, tuple[int, ...]]:
    """The model's state names (exactly ``nn.Module.state_dict()``'s) and shapes, in order."""
    return {f"{path}.{k}": shape for path, layer in spec.layers() for k, shape in tensor_shapes(layer).items()}


# -- torch ---------------------------------------------------------------------------


def to_torch(spec: Sequential) -> nn.Module:
    """The ``nn.Sequential`` tree the spec describes (torch's default initialisation)."""
    from collections import OrderedDict

    from torch import nn

    def build(node: Node) -> nn.Module:
        if isinstance(node, Sequential):
            return nn.Sequential(OrderedDict((name, build(child)) for name, child in node.children))
        kwargs = {f.name: getattr(node, f.name) for f in fields(node)}
        return getattr(nn, type(node).__name__)(**kwargs)

    return build(spec)


def from_torch(module: nn.Module, path: str = "") -> Sequential:
    """The spec of an ``nn.Sequential`` tree of supported layers.

    Raises :class:`UnsupportedLayerError` naming the first layer (its path and class)
    that is not one, or a container whose own ``forward`` the spec cannot follow.
    """
    from torch import nn

    where = f"layer {path!r}" if path else "the model"
    if not (isinstance(module, nn.Sequential) and _plain_forward(module)):
        raise UnsupportedLayerError(
            f"{where} is {type(module).__name__}, which the numpy runtime cannot run: it takes nn.Sequential "
            f"trees of {', '.join(LAYER_TYPES)} (declare the task's model_spec())"
        )
    children: list[tuple[str, Node]] = []
    for name, child in module.named_children():
        child_path = f"{path}.{name}" if path else name
        if isinstance(child, nn.Sequential):
            children.append((name, from_torch(child, child_path)))
        else:
            children.append((name, _layer_from_torch(child, child_path)))
    return Sequential(tuple(children))


def _plain_forward(module: nn.Module) -> bool:
    from torch import nn

    return type(module).forward is nn.Sequential.forward


def _layer_from_torch(module: nn.Module, path: str) -> Layer:
    from torch import nn

    name = type(module).__name__
    cls = LAYER_TYPES.get(name)
    if cls is None or type(module) is not getattr(nn, name, None):
        raise UnsupportedLayerError(
            f"layer {path!r} is {name}, which the numpy runtime does not support (supported: {', '.join(LAYER_TYPES)})"
        )
    problem = ""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.padding_mode != "zeros" or isinstance(module.padding, str) or set(module.dilation) != {1}:
            problem = "only zero padding by numbers and dilation 1 are supported"
        else:
            args = dict(
                in_channels=module.in_channels, out_channels=module.out_channels, stride=module.stride,
                padding=module.padding, groups=module.groups, bias=module.bias is not None,
            )
            if isinstance(module, nn.Conv1d):
                return Conv1d(kernel_size=module.kernel_size[0], **{**args, "stride": module.stride[0], "padding": module.padding[0]})  # type: ignore[arg-type]
            return Conv2d(kernel_size=module.kernel_size, **args)  # type: ignore[arg-type]
    elif isinstance(module, nn.Linear):
        return Linear(module.in_features, module.out_features, module.bias is not None)
    elif isinstance(module, (nn.ReLU, nn.ReLU6)):
        return ReLU() if isinstance(module, nn.ReLU) else ReLU6()
    elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)):
        if module.padding not in (0, (0, 0)) or module.dilation not in (1, (1, 1)) or module.ceil_mode or module.return_indices:
            problem = "only padding 0, dilation 1, floor mode are supported"
        elif isinstance(module, nn.MaxPool1d):
            return MaxPool1d(as_single(module.kernel_size), as_single(module.stride))
        else:
            return MaxPool2d(module.kernel_size, module.stride)
    elif isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        try:
            return cls(module.output_size)
        except UnsupportedLayerError as exc:
            problem = str(exc)
    elif isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            problem = "only start_dim=1, end_dim=-1 is supported"
        else:
            return Flatten()
    elif isinstance(module, nn.GroupNorm):
        return GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine)
    raise UnsupportedLayerError(f"layer {path!r} ({name}): {problem}")
