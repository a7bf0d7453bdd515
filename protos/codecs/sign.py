"""Scaled sign (EF-signSGD, Karimireddy et al. 2019): one bit per element plus a scale.

``decode = mean(|x|) * sign(x)``; ``floats = [scale]``. Biased, so clients run it with error feedback, which
restores convergence. Zero maps to +scale.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs import bitpack
from fedge.protos.codecs.base import Codec, floats_of, num_elements, register
from fedge.protos.v1 import tensor_pb2 as pb


@register("sign")
class SignCodec(Codec):
    """1 bit per element and one float32 scale (the mean magnitude)."""

    wire_params = (0, 1)

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        flat = np.asarray(array, dtype=np.float32).ravel()
        msg.floats.append(float(np.abs(flat).mean()) if flat.size else 0.0)
        msg.data = bitpack.pack((flat >= 0).astype(np.uint8), 1)

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        bits = bitpack.unpack(msg.data, num_elements(shape), 1)
        (scale,) = floats_of(msg, 1)
        return ((bits.astype(np.float32) * 2 - 1) * np.float32(scale)).reshape(shape).astype(dtype, copy=False)
