"""Whole-model encoding: a dict of named tensors <-> one ``CompressedUpdate``.

:func:`decode_update` is the safe decoder: it checks the payload against the model it
claims to update (tensor names, shapes, dtypes, finiteness, size) and raises a typed
:class:`~fedge.protos.codecs.errors.CodecError` naming the first problem it finds.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

from fedge.protos.codecs import dtypes
from fedge.protos.codecs.base import Codec, CodecSpec, make_codec, require_finite
from fedge.protos.codecs.errors import (
    CodecError,
    DTypeMismatchError,
    MalformedPayloadError,
    OversizeError,
    ShapeMismatchError,
    UnknownCodecError,
)
from fedge.protos.v1 import tensor_pb2 as pb

#: Codec for tensors that are not floating point (counters, masks): stored as they are.
LOSSLESS_CODEC = "fp32"


def encode_update(
    arrays: Mapping[str, np.ndarray],
    spec: CodecSpec | str,
    kind: pb.UpdateKind = pb.UPDATE_KIND_DELTA,
    base_round: int = 0,
    state: MutableMapping[str, dict] | None = None,
    fallback: CodecSpec | str = LOSSLESS_CODEC,
    dense_below: int = 0,
    out: pb.CompressedUpdate | None = None,
) -> pb.CompressedUpdate:
    """Encode named tensors with ``spec`` (into ``out`` if given: an empty CompressedUpdate,
    e.g. the ``update`` field of a reply being built, so the payload is not copied into
    its place afterwards; ``out`` is returned).

    Non-float tensors always go losslessly. Float tensors with fewer than
    ``dense_below`` elements, or that the codec does not support (e.g. 1-D tensors for
    PowerSGD), go with ``fallback``. The codec's :meth:`~Codec.allocate` sees all the
    others at once (global top-k splits its budget there). ``state`` holds each tensor's
    encoder memory.
    """
    codec = make_codec(spec)
    # a lossless codec keeps no state between tensors: one instance serves every role it has
    small = codec if codec.lossless and fallback == spec else make_codec(fallback)
    raw = codec if codec.lossless and spec == LOSSLESS_CODEC else make_codec(LOSSLESS_CODEC)
    if out is None:
        out = pb.CompressedUpdate()
    out.kind, out.base_round = kind, base_round
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    main = codec.allocate(
        {
            name: array
            for name, array in arrays.items()
            if np.issubdtype(array.dtype, np.floating) and array.size >= dense_below and codec.supports(array)
        }
    )
    for name, array in arrays.items():
        if name in main:
            chosen = main[name]
        elif np.issubdtype(array.dtype, np.floating):
            chosen = small
        else:
            chosen = raw
        tensor_state = state.setdefault(name, {}) if state is not None else None
        chosen.encode_to(out.tensors.add(), array, name, tensor_state)
    return out


def parse_update(payload: bytes, max_bytes: int | None = None) -> pb.CompressedUpdate:
    """Parse serialised ``CompressedUpdate`` bytes; typed errors for junk or oversize."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise OversizeError(f"update is {len(payload)} bytes, the limit is {max_bytes}")
    msg = pb.CompressedUpdate()
    try:
        msg.ParseFromString(payload)
    except Exception as exc:  # protobuf raises DecodeError, sometimes others
        raise MalformedPayloadError(f"update bytes do not parse: {exc}") from None
    return msg


def decode_update(
    update: pb.CompressedUpdate,
    reference: Mapping[str, np.ndarray] | None = None,
    *,
    expected_kind: int | None = None,
) -> dict[str, np.ndarray]:
    """Decode every tensor; with ``reference``, validate against that model.

    Raises a :class:`CodecError` subclass when a codec is unknown, a payload is
    malformed, the tensor names/shapes/dtypes differ from ``reference``, or a
    value is NaN/Inf.
    """
    if expected_kind is not None and update.kind != expected_kind:
        raise MalformedPayloadError(
            f"update kind {pb.UpdateKind.Name(update.kind) if update.kind in pb.UpdateKind.values() else update.kind}"
            f" where {pb.UpdateKind.Name(expected_kind)} was expected"
        )
    names = [t.name for t in update.tensors]
    if len(set(names)) != len(names):
        raise MalformedPayloadError("update names a tensor twice")
    if reference is not None and set(names) != set(reference):
        missing = sorted(set(reference) - set(names))
        extra = sorted(set(names) - set(reference))
        raise ShapeMismatchError(f"tensor names differ from the model: missing {missing}, unexpected {extra}")
    decoded: dict[str, np.ndarray] = {}
    codecs: dict[str, Codec] = {}  # one decoder per codec name of this update (decoding keeps no state)
    for tensor in update.tensors:
        if reference is not None:
            _check_meta(tensor, reference[tensor.name])
        try:
            codec = codecs.get(tensor.codec)
            if codec is None:
                codec = codecs[tensor.codec] = make_codec(tensor.codec)
            array = codec.decode(tensor)
        except UnknownCodecError:
            raise UnknownCodecError(f"tensor {tensor.name!r}: unknown codec {tensor.codec!r}") from None
        except CodecError:
            raise
        except (ValueError, TypeError, IndexError, OverflowError, MemoryError) as exc:
            raise MalformedPayloadError(f"tensor {tensor.name!r} ({tensor.codec}): {exc}") from None
        require_finite(tensor.name, array)
        decoded[tensor.name] = array
    return decoded


def subtract_decoded(update: pb.CompressedUpdate, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays[name] -= decoded[name]`` in place for every float array, where ``decoded``
    is what :func:`decode_update` returns for ``update``: the same numbers, without
    building the decoded tensors (a sparse tensor touches only its kept positions).

    Error feedback's step after encoding: ``arrays`` (the corrected delta, owned by the
    caller and writable) becomes the residual. Raises ``NonFiniteError`` where
    :func:`decode_update` would, ``ShapeMismatchError`` when a tensor's shape differs.
    """
    for tensor in update.tensors:
        target = arrays.get(tensor.name)
        if target is None or not np.issubdtype(target.dtype, np.floating):
            continue
        _check_meta(tensor, target)
        make_codec(tensor.codec).subtract_decoded(tensor, target)


def _check_meta(tensor: pb.CompressedTensor, expected: np.ndarray) -> None:
    shape = tuple(int(d) for d in tensor.shape)
    if shape != tuple(expected.shape):
        raise ShapeMismatchError(
            f"tensor {tensor.name!r}: shape {list(shape)}, the model has {list(expected.shape)}"
        )
    dtype = dtypes.from_wire(tensor.dtype)
    if dtype != expected.dtype:
        raise DTypeMismatchError(f"tensor {tensor.name!r}: dtype {dtype}, the model has {expected.dtype}")


def payload_bytes(update: pb.CompressedUpdate) -> int:
    """Serialised size of an update in bytes (what crosses the wire)."""
    return update.ByteSize()
