"""Uniform b-bit quantisation (QSGD-style), per tensor or per output channel.

Each value maps to one of ``2**bits`` evenly spaced levels between the minimum and the
maximum of its tensor (or of its channel: the first axis). Deterministic rounding picks
the nearest level; stochastic rounding picks the level above with probability equal to
the distance from the level below, so ``E[decode(encode(x))] = x`` (unbiased, as in
QSGD, Alistarh et al. 2017).

Wire layout: ``ints = [bits, channels]``; for one channel ``floats = [offset, step]``, for
several two float32 ``parts`` (offsets, steps); ``data`` = ``bits``-bit level indices,
MSB first.

Deterministic rounding runs fused: each block of ``BLOCK`` elements goes through
subtract, scale, round, clip and the cast to bytes while it sits in the CPU cache, and
decoding scales and offsets the levels block by block the same way; the float32
operations and their order are those of the plain vectorised form, so the bytes and
the decoded values are identical to it (``tests/test_codec_speed_paths.py``).

Written by hand because neither torch nor numpy offers a serialisable sub-byte format.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs import bitpack
from fedge.protos.codecs.base import Codec, floats_of, ints_of, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb

#: Elements per fused block: 64k float32 = 256 KiB, within a core's L2 cache.
BLOCK = 1 << 16


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
        if self.stochastic:
            q = rows - lo[:, None]
            q *= inv[:, None]
            q += self._rng.random(q.shape, dtype=np.float32)
            np.floor(q, out=q)
            np.clip(q, 0, levels, out=q)
            codes = q.astype(np.uint8).ravel()
        else:
            codes = _nearest_levels(rows, lo, inv, levels)
        msg.ints.extend([self.bits, channels])
        msg.data = bitpack.pack(codes, self.bits)
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
        codes = bitpack.unpack(msg.data, n, bits).reshape(channels, -1)
        return _levels_to_values(codes, lo, scale).reshape(shape).astype(dtype, copy=False)


def _nearest_levels(rows: np.ndarray, lo: np.ndarray, inv: np.ndarray, levels: int) -> np.ndarray:
    """``clip(rint((rows - lo) * inv), 0, levels)`` per row, as uint8, one cached block at a time
    (short rows, which would cost a Python loop each, in one vectorised pass)."""
    width = rows.shape[1]
    if width < BLOCK // 16:
        q = rows - lo[:, None]
        q *= inv[:, None]
        np.rint(q, out=q)
        np.clip(q, 0, levels, out=q)
        return q.astype(np.uint8).ravel()
    codes = np.empty(rows.size, dtype=np.uint8)
    work = np.empty(min(BLOCK, max(width, 1)), dtype=np.float32)
    for c in range(rows.shape[0]):
        row, offset, factor = rows[c], lo[c], inv[c]
        for start in range(0, width, BLOCK):
            block = row[start : start + BLOCK]
            buf = work[: block.size]
            np.subtract(block, offset, out=buf)
            np.multiply(buf, factor, out=buf)
            np.rint(buf, out=buf)
            np.clip(buf, 0, levels, out=buf)
            at = c * width + start
            np.copyto(codes[at : at + block.size], buf, casting="unsafe")
    return codes


def _levels_to_values(codes: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``float32(codes) * scale + lo`` per row (shape ``(channels, n)``), block by block
    (short rows in one vectorised pass)."""
    if codes.shape[1] < BLOCK // 16:
        q = codes.astype(np.float32)
        q *= scale[:, None]
        q += lo[:, None]
        return q
    out = np.empty(codes.shape, dtype=np.float32)
    for c in range(codes.shape[0]):
        for start in range(0, codes.shape[1], BLOCK):
            dst = out[c, start : start + BLOCK]
            np.copyto(dst, codes[c, start : start + BLOCK], casting="unsafe")  # uint8 -> float32, exact
            np.multiply(dst, scale[c], out=dst)
            np.add(dst, lo[c], out=dst)
    return out


def _floats(part: pb.CompressedTensor, count: int, name: str) -> np.ndarray:
    if part.codec != "fp32" or len(part.data) != 4 * count:
        raise MalformedPayloadError(f"tensor {name!r}: scale part must hold {count} float32 values")
    return np.frombuffer(part.data, dtype="<f4").astype(np.float32)
