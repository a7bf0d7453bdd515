"""Dense codecs: the tensor's elements as little-endian floats.

``fp32`` is lossless for float32 models (the uncompressed baseline, and the codec for
non-float tensors, which it stores in their own dtype); ``fp16`` halves the bytes.

The float32 <-> float16 casts: numpy's runs one element at a time (20-40x slower than a
copy, far slower on values that round to fp16 subnormals). A process that has torch
loaded (every simulated client, ``fedge-client`` and the server) casts with torch's
vectorised F16C kernels instead (:mod:`fedge.protos.codecs.half`); both round to
nearest even, so the bytes and the decoded values are the same.
"""

from __future__ import annotations

import numpy as np

from fedge.protos.codecs.base import Codec, expect_bytes, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.codecs.half import half_to_single, single_to_half_bytes
from fedge.protos.v1 import tensor_pb2 as pb


def _no_parts(msg: pb.CompressedTensor) -> None:
    if msg.parts:
        raise MalformedPayloadError(f"tensor {msg.name!r} ({msg.codec}): a dense tensor has no parts")


@register("fp32")
class Fp32Codec(Codec):
    """Raw little-endian elements in the tensor's own dtype (float32 for models)."""

    lossless = True

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: object = None) -> None:
        msg.data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _no_parts(msg)
        data = msg.data  # each read of a bytes field copies it out of the message: read it once
        expect_bytes(msg, num_elements(shape), dtype.itemsize, data)
        wire = dtype.newbyteorder("<")
        return np.frombuffer(data, dtype=wire).astype(dtype, copy=True).reshape(shape)


@register("fp16")
class Fp16Codec(Codec):
    """IEEE half precision: 2 bytes per element, ~3 significant digits.

    Values beyond the fp16 range (|x| > 65504) become Inf, which the safe decoder
    rejects; model weights and deltas stay far inside that range.
    """

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: object = None) -> None:
        msg.data = single_to_half_bytes(array)

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        _no_parts(msg)
        expect_bytes(msg, num_elements(shape), 2)
        return half_to_single(np.frombuffer(msg.data, dtype="<f2")).astype(dtype, copy=False).reshape(shape)
