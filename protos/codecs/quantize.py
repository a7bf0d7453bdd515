"""Uniform b-bit quantisation (QSGD-style), per tensor or per output channel.

Each value maps to one of ``2**bits`` evenly spaced levels between the minimum and the
maximum of its tensor (or of its channel: the first axis). Deterministic rounding picks
the nearest level; stochastic rounding picks the level above with probability equal to
the distance from the level below, so ``E[decode(encode(x))] = x`` (unbiased, as in
QSGD, Alistarh et al. 2017).

Wire layout: ``ints = [bits, channels]``; for one channel ``floats = [offset, step]``, for
several two float32 ``parts`` (offsets, steps); ``data`` = ``bits``-bit level indices,
MSB first.

Deterministic rounding runs fused: the range of a long tensor is one pass
(``torch.aminmax`` if the process has already imported torch, else numpy's min and max
block by block); then each block of ``BLOCK`` elements goes through subtract and scale
while it sits in the CPU cache and is rounded by an addition (:data:`ROUNDER`) whose
low bytes are stored straight into the payload's bytes (no separate cast pass, no copy),
and decoding casts, scales and offsets the levels block by block the same way, reading
the payload in place. Blocks go last to first, so each pass starts on the part of its
input the previous pass left in cache. The float32 operations and their order are those
of the plain vectorised form, so the bytes and the decoded values are identical to it
(``tests/test_codec_speed_paths.py``). The clip to ``[0, levels]`` of the plain form is
skipped when it provably changes nothing (:func:`_clip_is_identity`), which is the case
for every finite tensor whose range is not degenerate.

Speed (``bench/codec_speed.py``, 11M elements, one core): what is left is mostly memory
traffic numpy cannot fuse away: two reads of the update (range, then levels), protobuf's
copies of the payload in and out of the message, and the decoded array's fresh pages.

Written by hand because neither torch nor numpy offers a serialisable sub-byte format.
"""

from __future__ import annotations

import warnings
from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs import bitpack, fresh_bytes, half
from fedge.protos.codecs.base import Codec, floats_of, ints_of, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb

#: Elements per fused block: 64k float32 = 256 KiB, within a core's L2 cache.
BLOCK = 1 << 16
#: 1.5 * 2**23. For a float32 ``y`` in ``[0, 2**22)``, ``y + ROUNDER`` is exact only as
#: an integer (float32's step there is 1), so the addition rounds ``y`` to the nearest
#: integer, ties to even, as ``rint`` does (``ROUNDER`` is even); that integer is the
#: low bits of the sum's mantissa, and a level (0..255) is its lowest byte.
ROUNDER = np.float32(3 << 22)


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
        lo, hi = _row_ranges(rows)
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
            msg.data = bitpack.pack(codes, self.bits)
        elif self.bits == 8:  # the levels are computed straight into the payload's bytes
            payload, codes = fresh_bytes.new_bytes(rows.size)
            _nearest_levels(rows, lo, hi, inv, levels, out=codes.reshape(rows.shape))
            msg.data = fresh_bytes.finish(payload)
        else:
            msg.data = bitpack.pack(_nearest_levels(rows, lo, hi, inv, levels), self.bits)
        msg.ints.extend([self.bits, channels])
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


def _row_ranges(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's minimum and maximum (zeros for empty rows). One long row (a tensor
    quantised as a whole) is reduced in one pass: ``torch.aminmax`` where torch is
    loaded (its kernel finds both at once), else block by block, min and max while the
    block is in cache; where that gives a zero (``-0.0`` or ``0.0``: which one the
    reduction returns depends on its order) or NaN (which payload), the plain reduction
    decides. Any other value is the same whichever reduction finds it."""
    if not rows.shape[1]:
        return np.zeros(rows.shape[0], np.float32), np.zeros(rows.shape[0], np.float32)
    if rows.shape[0] > 1 or rows.shape[1] < 4 * BLOCK:
        return rows.min(axis=1), rows.max(axis=1)
    row = rows[0]
    torch = half.loaded_torch()
    if torch is not None and row.flags.c_contiguous:
        with warnings.catch_warnings():  # a read-only update: torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            low, high = torch.aminmax(torch.from_numpy(row))  # type: ignore[attr-defined]
        lo, hi = np.array([low.item()], rows.dtype), np.array([high.item()], rows.dtype)
    else:
        blocks = range(0, row.size, BLOCK)
        mins, maxs = np.empty(len(blocks), rows.dtype), np.empty(len(blocks), rows.dtype)
        for i, start in enumerate(blocks):
            block = row[start : start + BLOCK]
            mins[i], maxs[i] = block.min(), block.max()
        lo, hi = mins.min(keepdims=True), maxs.max(keepdims=True)
    if not lo[0] != 0:
        lo = rows.min(axis=1)
    if not hi[0] != 0:
        hi = rows.max(axis=1)
    return lo, hi


def _nearest_levels(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, inv: np.ndarray, levels: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``clip(rint((rows - lo) * inv), 0, levels)`` per row (``lo``/``hi``: each row's
    minimum and maximum), flattened, as uint8; written into ``out`` (uint8, ``rows``'
    shape) if given.

    Long rows go block by block, last block first (the range's pass left the row's
    tail in cache; the codes' head is then hot for protobuf's copy of the payload):
    subtract and scale into a cached float32 buffer, round by adding ``ROUNDER`` and
    store the sums' low bytes straight into the codes (an integer cast: ~15% faster than
    ``rint`` with a float-to-uint8 cast, same levels), no full-size temporary. Short
    rows, which would cost a Python loop each, go in one vectorised pass."""
    width = rows.shape[1]
    if width < BLOCK // 16:
        q = rows - lo[:, None]
        q *= inv[:, None]
        np.rint(q, out=q)
        np.clip(q, 0, levels, out=q)
        if out is None:
            return q.astype(np.uint8).ravel()
        np.copyto(out, q, casting="unsafe")  # the cast astype(np.uint8) makes
        return out.ravel()
    codes = np.empty(rows.shape, dtype=np.uint8) if out is None else out
    work = np.empty(min(BLOCK, width), dtype=np.float32)
    for c in range(rows.shape[0]):
        row, out, offset, factor = rows[c], codes[c], lo[c], inv[c]
        clip = not _clip_is_identity(offset, hi[c], factor, levels)
        for start in reversed(range(0, width, BLOCK)):
            block, dst = row[start : start + BLOCK], out[start : start + BLOCK]
            buf = work[: block.size]
            np.subtract(block, offset, out=buf)
            np.multiply(buf, factor, out=buf)
            if clip:
                np.rint(buf, out=buf)
                np.clip(buf, 0, levels, out=buf)
                np.copyto(dst, buf, casting="unsafe")
            else:  # rint by adding 1.5 * 2**23, the level is the low byte of the sum's bits
                np.add(buf, ROUNDER, out=buf)
                np.copyto(dst, buf.view(np.uint32), casting="unsafe")
    return codes.ravel()


def _clip_is_identity(lo: np.float32, hi: np.float32, inv: np.float32, levels: int) -> bool:
    """Whether ``clip(rint((row - lo) * inv), 0, levels)`` equals the same without the
    clip, for a row with minimum ``lo`` and maximum ``hi`` (float32 scalars).

    float32 rounding is monotone, so for every ``x`` of the row
    ``0 <= (x - lo) * inv <= (hi - lo) * inv``, each side rounded as the encoder rounds
    it, and ``rint`` is monotone too: when that top is below ``levels + 0.5`` (always,
    unless the range over ``levels`` is subnormal) no level leaves ``[0, levels]``. A
    NaN or infinity in the row makes ``lo``, ``hi`` or the top NaN or infinite: the clip
    then stays.
    """
    top = (hi - lo) * inv
    return bool(np.isfinite(lo) and np.isfinite(inv) and top < levels + 0.5)


def _levels_to_values(codes: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``float32(codes) * scale + lo`` per row (shape ``(channels, n)``), block by block,
    last block first (the payload's tail is what its copy out of the message left in
    cache); short rows in one vectorised pass."""
    if codes.shape[1] < BLOCK // 16:
        q = codes.astype(np.float32)
        q *= scale[:, None]
        q += lo[:, None]
        return q
    out = np.empty(codes.shape, dtype=np.float32)
    for c in range(codes.shape[0]):
        for start in reversed(range(0, codes.shape[1], BLOCK)):
            dst = out[c, start : start + BLOCK]
            # uint8 -> float32 (exact) by numpy's cast copy into the cached block, then scale
            # and offset it in place: ~8% faster than the cast inside the multiply (a buffered
            # mixed-type loop), same float32 operations, same values
            dst[...] = codes[c, start : start + BLOCK]
            np.multiply(dst, scale[c], out=dst)
            np.add(dst, lo[c], out=dst)
    return out


def _floats(part: pb.CompressedTensor, count: int, name: str) -> np.ndarray:
    if part.codec != "fp32" or len(part.data) != 4 * count:
        raise MalformedPayloadError(f"tensor {name!r}: scale part must hold {count} float32 values")
    return np.frombuffer(part.data, dtype="<f4").astype(np.float32)
