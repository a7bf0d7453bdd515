"""Codecs: each an encode/decode pair between a numpy tensor and a CompressedTensor.

Import this package to register every codec; :func:`make_codec` builds one by name.
"""

from fedge.protos.codecs import dense, kmeans, lowrank, nonzero, quantize, sign, sparse  # noqa: F401  (registration)
from fedge.protos.codecs.base import CodecSpec, Codec, available, make_codec, register
from fedge.protos.codecs.errors import (
    CodecError,
    DTypeMismatchError,
    MalformedPayloadError,
    NonFiniteError,
    OversizeError,
    ShapeMismatchError,
    UnknownCodecError,
)
from fedge.protos.codecs.update import decode_update, encode_update, parse_update, payload_bytes, subtract_decoded

__all__ = [
    "Codec",
    "CodecError",
    "CodecSpec",
    "DTypeMismatchError",
    "MalformedPayloadError",
    "NonFiniteError",
    "OversizeError",
    "ShapeMismatchError",
    "UnknownCodecError",
    "available",
    "decode_update",
    "encode_update",
    "make_codec",
    "parse_update",
    "payload_bytes",
    "register",
    "subtract_decoded",
]
