"""The codec contract, the codec spec carried in round config, and the registry.

A codec is an encode/decode pair over one tensor (TensorFlow Federated's encoding
stages are the model): ``encode(array) -> CompressedTensor`` and
``decode(CompressedTensor) -> array``. Everything decode needs (codec id, shape,
dtype, parameters) is inside the CompressedTensor, so a decoder needs only the bytes.
Written by hand because no library encodes tensors to a wire-stable protobuf format.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from math import prod

import numpy as np

from fedge.protos.codecs import dtypes
from fedge.protos.codecs.errors import MalformedPayloadError, NonFiniteError, UnknownCodecError
from fedge.protos.v1 import tensor_pb2 as pb

#: Prefix of codec keys in a round's ConfigRecord / Task.config.
CONFIG_PREFIX = "fedge.codec"

ConfigScalar = int | float | str | bool


@dataclass(frozen=True)
class CodecSpec:
    """Which codec to use and its parameters, e.g. ``CodecSpec("fp16")``.

    Serialised into a round's config as ``fedge.codec = name`` and
    ``fedge.codec.<param> = value``, so every client of a round encodes the same way.
    """

    name: str = "fp32"
    params: Mapping[str, ConfigScalar] = field(default_factory=dict)

    def to_config(self, prefix: str = CONFIG_PREFIX) -> dict[str, ConfigScalar]:
        """Flat config entries for this spec."""
        out: dict[str, ConfigScalar] = {prefix: self.name}
        out.update({f"{prefix}.{k}": v for k, v in self.params.items()})
        return out

    @classmethod
    def from_config(
        cls, config: Mapping[str, object], prefix: str = CONFIG_PREFIX
    ) -> CodecSpec:
        """Read a spec back from flat config entries; fp32 when none is given."""
        name = config.get(prefix, "fp32")
        if not isinstance(name, str):
            raise UnknownCodecError(f"config key {prefix!r} must be a codec name, got {name!r}")
        start = prefix + "."
        params = {
            k[len(start) :]: v
            for k, v in config.items()
            if k.startswith(start) and isinstance(v, (int, float, str, bool))
        }
        return cls(name, params)


class Codec(ABC):
    """Encodes one numpy tensor to a CompressedTensor and decodes it back."""

    #: Wire id of this codec, written into ``CompressedTensor.codec``.
    name: str = ""
    #: True when ``decode(encode(x)) == x`` bit for bit.
    lossless: bool = False
    #: How many positional ``(ints, floats)`` this codec writes; None = it checks itself.
    wire_params: tuple[int, int] | None = (0, 0)

    def encode(
        self, array: np.ndarray, name: str = "", state: MutableMapping[str, object] | None = None
    ) -> pb.CompressedTensor:
        """Encode ``array`` (any shape) into a CompressedTensor named ``name``.

        ``state`` is the encoder's per-tensor memory across rounds (e.g. PowerSGD's
        warm-start factors); stateless codecs ignore it. Decoding never needs it.
        """
        msg = pb.CompressedTensor()
        self.encode_to(msg, array, name, state)
        return msg

    def encode_to(
        self, msg: pb.CompressedTensor, array: np.ndarray, name: str = "", state: MutableMapping[str, object] | None = None
    ) -> None:
        """:meth:`encode` into ``msg`` (an empty CompressedTensor, e.g. a new element of an
        update's ``tensors``: no copy of the encoded payload into its place afterwards)."""
        array = np.asarray(array)
        msg.name, msg.codec, msg.dtype = name, self.name, dtypes.to_wire(array.dtype)
        msg.shape.extend(array.shape)
        self._encode_into(array, msg, state)

    def allocate(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Codec]:
        """The codec each tensor of one update is encoded with (this one for all).

        Codecs with a budget over the whole update (global top-k) override this to
        split it into per-tensor codecs; each tensor still decodes on its own.
        """
        return dict.fromkeys(arrays, self)

    def supports(self, array: np.ndarray) -> bool:
        """Whether this codec can encode ``array`` (else the update's fallback codec does)."""
        return True

    def decode(self, msg: pb.CompressedTensor) -> np.ndarray:
        """Decode a CompressedTensor written by this codec; raises ``CodecError``."""
        shape, dtype = self._header(msg)
        return self._decode(msg, shape, dtype)

    def subtract_decoded(self, msg: pb.CompressedTensor, out: np.ndarray) -> None:
        """``out -= decode(msg)`` in place: what the receiver will add, taken off the
        sender's copy (error feedback's residual). ``out`` has the tensor's shape and
        dtype. Raises ``CodecError`` as :meth:`decode` does, and ``NonFiniteError`` when a
        decoded value is NaN or Inf (as :func:`~fedge.protos.codecs.update.decode_update`
        does). Sparse codecs override it to touch only the positions they send.
        """
        decoded = self.decode(msg)
        require_finite(msg.name, decoded)
        np.subtract(out, decoded, out=out)

    def _header(self, msg: pb.CompressedTensor) -> tuple[tuple[int, ...], np.dtype]:
        """``msg``'s shape and dtype, after checking it is this codec's and well formed."""
        if msg.codec != self.name:
            raise UnknownCodecError(f"codec {self.name!r} cannot decode {msg.codec!r}")
        if any(d < 0 for d in msg.shape):
            raise MalformedPayloadError(f"tensor {msg.name!r}: negative dimension in {list(msg.shape)}")
        if self.wire_params is not None and (len(msg.ints), len(msg.floats)) != self.wire_params:
            raise MalformedPayloadError(
                f"tensor {msg.name!r} ({msg.codec}): {len(msg.ints)} int and {len(msg.floats)} float "
                f"parameters, the codec writes {self.wire_params[0]} and {self.wire_params[1]}"
            )
        return tuple(int(d) for d in msg.shape), dtypes.from_wire(msg.dtype)

    @abstractmethod
    def _encode_into(
        self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping[str, object] | None
    ) -> None:
        """Fill ``msg.data`` / ``msg.ints`` / ``msg.floats`` / ``msg.parts`` for ``array``."""

    @abstractmethod
    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Rebuild the tensor of ``shape`` and ``dtype`` from ``msg``."""


def expect_bytes(msg: pb.CompressedTensor, count: int, item_size: int, data: bytes | None = None) -> None:
    """Raise ``MalformedPayloadError`` unless ``msg.data`` (or ``data``, the caller's copy of it)
    holds exactly ``count`` items."""
    size = len(msg.data if data is None else data)
    if size != count * item_size:
        raise MalformedPayloadError(
            f"tensor {msg.name!r} ({msg.codec}): payload is {size} bytes, "
            f"shape {list(msg.shape)} needs {count * item_size}"
        )


def ints_of(msg: pb.CompressedTensor, count: int) -> list[int]:
    """The ``count`` positional integer parameters of ``msg``, or ``MalformedPayloadError``."""
    if len(msg.ints) != count:
        raise MalformedPayloadError(f"tensor {msg.name!r} ({msg.codec}): expected {count} int parameters, got {len(msg.ints)}")
    return [int(v) for v in msg.ints]


def floats_of(msg: pb.CompressedTensor, count: int) -> list[float]:
    """The ``count`` positional float parameters of ``msg``, or ``MalformedPayloadError``."""
    if len(msg.floats) != count:
        raise MalformedPayloadError(
            f"tensor {msg.name!r} ({msg.codec}): expected {count} float parameters, got {len(msg.floats)}"
        )
    return [float(v) for v in msg.floats]


def require_finite(name: str, array: np.ndarray) -> None:
    """Raise ``NonFiniteError`` if the float ``array`` (decoded tensor ``name``) holds NaN or Inf."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # the method: np.all's wrapper costs ~10 us a call
        raise NonFiniteError(f"tensor {name!r} holds NaN or Inf")


def num_elements(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of ``shape``."""
    return int(prod(shape))


_REGISTRY: dict[str, Callable[..., Codec]] = {}


def register(name: str) -> Callable[[type[Codec]], type[Codec]]:
    """Class decorator: make a codec constructible by name from a :class:`CodecSpec`."""

    def wrap(cls: type[Codec]) -> type[Codec]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of all registered codecs."""
    return sorted(_REGISTRY)


def codec_parameters(name: str) -> tuple[str, ...]:
    """Constructor parameter names of the registered codec ``name`` (``seed`` excluded);
    empty for an unknown name (:func:`make_codec` then names the known ones)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        return ()
    return tuple(p for p in inspect.signature(factory).parameters if p not in ("self", "seed"))


#: Shorthand names: ``q8`` = 8-bit uniform, ``q4s`` = 4-bit stochastic uniform.
_UNIFORM_ALIAS = re.compile(r"^q([1-8])(s?)$")


def resolve_alias(spec: CodecSpec) -> CodecSpec:
    """Expand a shorthand codec name (``q8``, ``q4s``) into its full spec."""
    match = _UNIFORM_ALIAS.match(spec.name)
    if match is None:
        return spec
    params = {"bits": int(match.group(1)), "stochastic": bool(match.group(2)), **spec.params}
    return CodecSpec("uniform", params)


def make_codec(spec: CodecSpec | str) -> Codec:
    """Build the codec a spec names; ``UnknownCodecError`` lists the known ones."""
    if isinstance(spec, str):
        spec = CodecSpec(spec)
    spec = resolve_alias(spec)
    try:
        factory = _REGISTRY[spec.name]
    except KeyError:
        raise UnknownCodecError(
            f"unknown codec {spec.name!r}; available: {', '.join(available())}, q1..q8[s]"
        ) from None
    try:
        return factory(**dict(spec.params))
    except (TypeError, ValueError) as exc:
        raise UnknownCodecError(f"codec {spec.name!r}: bad parameters {dict(spec.params)}: {exc}") from None
