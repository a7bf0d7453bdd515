"""Mapping between numpy dtypes and the wire's ``DType`` enum."""

from __future__ import annotations

import numpy as np

from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb

_TO_WIRE: dict[np.dtype, pb.DType] = {
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.float16): pb.DTYPE_FLOAT16,
    np.dtype(np.float64): pb.DTYPE_FLOAT64,
    np.dtype(np.int64): pb.DTYPE_INT64,
    np.dtype(np.int32): pb.DTYPE_INT32,
    np.dtype(np.int8): pb.DTYPE_INT8,
    np.dtype(np.uint8): pb.DTYPE_UINT8,
    np.dtype(np.bool_): pb.DTYPE_BOOL,
}
_FROM_WIRE: dict[int, np.dtype] = {v: k for k, v in _TO_WIRE.items()}


def to_wire(dtype: np.dtype) -> pb.DType:
    """The wire enum for a numpy dtype; ``ValueError`` for an unsupported one."""
    try:
        return _TO_WIRE[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype)} cannot be sent on the wire") from None


def from_wire(value: int) -> np.dtype:
    """The numpy dtype for a wire enum value; ``MalformedPayloadError`` if unknown."""
    try:
        return _FROM_WIRE[value]
    except KeyError:
        raise MalformedPayloadError(f"unknown dtype enum value {value}") from None
