"""Dense codecs: the tensor's elements as little-endian floats.

``fp32`` is lossless for float32 models (the uncompressed baseline, and the codec for
non-float tensors, which it stores in their own dtype); ``fp16`` halves the bytes.
"""

from __future__ import annotations

import numpy as np

from fedge.protos.codecs.base import Codec, expect_bytes, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError


def _no_parts(msg: pb.CompressedTensor) -> None:
    if msg.parts:
        raise MalformedPayloadError(f"tensor {msg.name!r} ({msg.codec}): a dense tensor has no parts")
from fedge.protos.v1 import tensor_pb2 as pb


@register("fp32")
class Fp32Codec(Codec):
    """Raw little-endian elements in the tensor's own dtype (float32 for models)."""

    lossless = True

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: object = None) -> None:
        msg.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _no_parts(msg)
        expect_bytes(msg, num_elements(shape), dtype.itemsize)
        wire = dtype.newbyteorder("<")
        return np.frombuffer(msg.data, dtype=wire).astype(dtype, copy=True).reshape(shape)


@register("fp16")
class Fp16Codec(Codec):
    """IEEE half precision: 2 bytes per element, ~3 significant digits.

    Values beyond the fp16 range (|x| > 65504) become Inf, which the safe decoder
    rejects; model weights and deltas stay far inside that range.
    """

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: object = None) -> None:
        msg.data = np.ascontiguousarray(array, dtype="<f2").tobytes()

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _no_parts(msg)
        expect_bytes(msg, num_elements(shape), 2)
        return np.frombuffer(msg.data, dtype="<f2").astype(dtype).reshape(shape)
