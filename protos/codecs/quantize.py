"""Uniform b-bit quantisation (QSGD-style), per tensor or per output channel.

Each value maps to one of ``2**bits`` evenly spaced levels between the minimum and the
maximum of its tensor (or of its channel: the first axis). Deterministic rounding picks
the nearest level; stochastic rounding picks the level above with probability equal to
the distance from the level below, so ``E[decode(encode(x))] = x`` (unbiased, as in
QSGD, Alistarh et al. 2017).

Wire layout: ``ints = [bits, channels]``; for one channel ``floats = [offset, step]``, for
several two float32 ``parts`` (offsets, steps); ``data`` = ``bits``-bit level indices,
MSB first.

Written by hand because neither torch nor numpy offers a serialisable sub-byte format.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs import bitpack
from fedge.protos.codecs.base import Codec, floats_of, ints_of, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb


@register("uniform")
class UniformCodec(Codec):
    """``bits``-bit uniform quantiser.

    Parameters
    ----------
    bits: levels are ``2**bits`` (1..8).
    stochastic: unbiased stochastic rounding instead of nearest level.
    per_channel: one scale/offset per slice of the first axis (tensors of 2+ dims).
    seed: base seed of the stochastic rounding's generator (None = fresh entropy).
    """

    wire_params = None  # [bits, channels] and, for one channel, [offset, step]

    def __init__(self, bits: int = 8, stochastic: bool = False, per_channel: bool = False, seed: int | None = None) -> None:
        bits = int(bits)
        if not 1 <= bits <= 8:
            raise ValueError(f"uniform: bits must be in 1..8, got {bits}")
        self.bits = bits
        self.stochastic = bool(stochastic)
        self.per_channel = bool(per_channel)
        self._rng = np.random.default_rng(seed)

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        x = np.asarray(array, dtype=np.float32)
        channels = x.shape[0] if (self.per_channel and x.ndim >= 2 and x.size) else 1
        rows = x.reshape(channels, -1) if x.size else x.reshape(channels, 0)
        lo = rows.min(axis=1) if rows.shape[1] else np.zeros(channels, np.float32)
        hi = rows.max(axis=1) if rows.shape[1] else np.zeros(channels, np.float32)
        levels = (1 << self.bits) - 1
        scale = ((hi - lo) / levels).astype(np.float32)
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0).astype(np.float32)
        q = rows - lo[:, None]
        q *= inv[:, None]
        if self.stochastic:
            q += self._rng.random(q.shape, dtype=np.float32)
            np.floor(q, out=q)
        else:
            np.rint(q, out=q)
        np.clip(q, 0, levels, out=q)
        msg.ints.extend([self.bits, channels])
        msg.data = bitpack.pack(q.astype(np.uint8).ravel(), self.bits)
        if channels == 1:
            msg.floats.extend([float(lo[0]), float(scale[0])])
            return
        msg.parts.add(codec="fp32", shape=[channels], dtype=pb.DTYPE_FLOAT32, data=lo.astype("<f4").tobytes())
        msg.parts.add(codec="fp32", shape=[channels], dtype=pb.DTYPE_FLOAT32, data=scale.astype("<f4").tobytes())

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        bits, channels = ints_of(msg, 2)
        n = num_elements(shape)
        if channels < 1 or (n and n % channels) or len(msg.parts) != (0 if channels == 1 else 2):
            raise MalformedPayloadError(f"tensor {msg.name!r} (uniform): bad channels {channels} or parts {len(msg.parts)}")
        if channels == 1:
            lo, scale = (np.array([v], dtype=np.float32) for v in floats_of(msg, 2))
        else:
            floats_of(msg, 0)
            lo, scale = (_floats(p, channels, msg.name) for p in msg.parts)
        q = bitpack.unpack(msg.data, n, bits).astype(np.float32).reshape(channels, -1)
        q *= scale[:, None]
        q += lo[:, None]
        return q.reshape(shape).astype(dtype, copy=False)


def _floats(part: pb.CompressedTensor, count: int, name: str) -> np.ndarray:
    if part.codec != "fp32" or len(part.data) != 4 * count:
        raise MalformedPayloadError(f"tensor {name!r}: scale part must hold {count} float32 values")
    return np.frombuffer(part.data, dtype="<f4").astype(np.float32)
