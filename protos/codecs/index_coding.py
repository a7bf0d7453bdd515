"""Compact coding of sorted index sets: Golomb-Rice on gaps, or a bitmap.

A set of ``k`` distinct indices out of ``d`` carries at least ``log2 C(d, k)`` bits of
information. Rice coding of the gaps between sorted indices (unary quotient + ``b``-bit
remainder, ``b`` chosen to minimise the exact total) comes within a few percent of that
floor for sparse sets; a ``d``-bit bitmap is near-optimal for dense ones. The smaller of
the two is sent. The unary parts and the remainders go in two separate bit streams, so
both directions vectorise with numpy (no per-index Python loop).

Wire layout (a ``CompressedTensor`` part with codec ``indices``, ``shape = [k]``):
``ints = [d, method, b, u]``: universe size, method (0 bitmap, 1 Rice, 2 Rice-coded
complement), Rice parameter, length of the unary stream in bits; ``data`` = unary stream
then ``b``-bit remainders (MSB first), padded to a byte.

Written by hand: no maintained Python library encodes index sets this way.
"""

from __future__ import annotations

import math

import numpy as np

from fedge.protos.codecs.base import ints_of
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb

BITMAP, RICE, RICE_COMPLEMENT = 0, 1, 2
MAX_RICE_BITS = 40


def log2_binomial(d: int, k: int) -> float:
    """``log2 C(d, k)``: the information-theoretic floor for a k-subset of d."""
    return (math.lgamma(d + 1) - math.lgamma(k + 1) - math.lgamma(d - k + 1)) / math.log(2)


def _bits_to_bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8, copy=False)).tobytes()


def _rice_cost(gaps: np.ndarray, b: int) -> int:
    return int((gaps >> b).sum()) + gaps.size * (1 + b)


def encode_indices(indices: np.ndarray, universe: int) -> pb.CompressedTensor:
    """Encode sorted, distinct ``indices`` in ``[0, universe)`` as a CompressedTensor part."""
    idx = np.asarray(indices, dtype=np.int64)
    if 2 * idx.size > universe:
        mask = np.ones(universe, dtype=bool)
        mask[idx] = False
        part = encode_indices(np.flatnonzero(mask), universe)
        if part.ints[1] == RICE:
            part.ints[1] = RICE_COMPLEMENT
            part.shape[0] = idx.size
            return part
        return _bitmap(idx, universe)
    k = idx.size
    part = pb.CompressedTensor(codec="indices", shape=[k], dtype=pb.DTYPE_INT64)
    gaps = np.diff(idx, prepend=-1) - 1 if k else idx
    best_b, best = 0, (universe + 1 if k else 0)  # bitmap cost + 1: Rice must beat it; k = 0 costs nothing
    if k:
        start = max(0, int(math.log2(max(gaps.mean(), 1.0))) - 2)
        for b in range(start, min(start + 6, MAX_RICE_BITS)):
            cost = _rice_cost(gaps, b)
            if cost < best:
                best_b, best = b, cost
    if best > universe:
        return _bitmap(idx, universe)
    q = gaps >> best_b
    unary_len = int(q.sum()) + k
    unary = np.ones(unary_len, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 0  # each quotient's ones end with a zero
    shifts = np.arange(best_b - 1, -1, -1, dtype=np.int64)
    remainders = ((gaps[:, None] >> shifts) & 1).ravel() if best_b else np.zeros(0, np.uint8)
    part.ints.extend([universe, RICE, best_b, unary_len])
    part.data = _bits_to_bytes(np.concatenate([unary, remainders.astype(np.uint8)]))
    return part


def _bitmap(idx: np.ndarray, universe: int) -> pb.CompressedTensor:
    mask = np.zeros(universe, dtype=np.uint8)
    mask[idx] = 1
    part = pb.CompressedTensor(codec="indices", shape=[idx.size], dtype=pb.DTYPE_INT64, data=_bits_to_bytes(mask))
    part.ints.extend([universe, BITMAP, 0, 0])
    return part


def decode_indices(part: pb.CompressedTensor) -> np.ndarray:
    """Sorted int64 indices from a part written by :func:`encode_indices`."""
    if part.codec != "indices" or len(part.shape) != 1:
        raise MalformedPayloadError(f"expected an index part, got codec {part.codec!r}")
    k = int(part.shape[0])
    universe, method, b, unary_len = ints_of(part, 4)
    if k < 0 or universe < 0 or k > universe:
        raise MalformedPayloadError(f"index part: {k} indices of a universe of {universe}")
    bits = np.unpackbits(np.frombuffer(part.data, dtype=np.uint8))
    if method == BITMAP:
        if len(part.data) != (universe + 7) // 8:
            raise MalformedPayloadError(f"bitmap of {len(part.data)} bytes for a universe of {universe}")
        idx = np.flatnonzero(bits[:universe])
        if idx.size != k:
            raise MalformedPayloadError(f"bitmap holds {idx.size} indices, {k} announced")
        return idx.astype(np.int64)
    if method == RICE_COMPLEMENT:
        if 2 * k <= universe:
            raise MalformedPayloadError("complement coding announced for a sparse set")
        complement = _decode_rice(part, bits, universe - k, universe)
        mask = np.ones(universe, dtype=bool)
        mask[complement] = False
        return np.flatnonzero(mask).astype(np.int64)
    if method != RICE:
        raise MalformedPayloadError(f"unknown index coding method {method}")
    return _decode_rice(part, bits, k, universe)


def _decode_rice(part: pb.CompressedTensor, bits: np.ndarray, k: int, universe: int) -> np.ndarray:
    _, _, b, unary_len = ints_of(part, 4)
    if not 0 <= b < MAX_RICE_BITS or unary_len < k or (unary_len + k * b + 7) // 8 != len(part.data):
        raise MalformedPayloadError("index part: Rice parameters do not match the payload size")
    unary = bits[:unary_len]
    ends = np.flatnonzero(unary == 0)
    if ends.size != k:
        raise MalformedPayloadError(f"Rice stream holds {ends.size} codes, {k} announced")
    q = np.diff(ends, prepend=-1) - 1
    if b:
        rem_bits = bits[unary_len : unary_len + k * b].reshape(k, b).astype(np.int64)
        r = rem_bits @ (1 << np.arange(b - 1, -1, -1, dtype=np.int64))
    else:
        r = np.zeros(k, dtype=np.int64)
    idx = np.cumsum((q.astype(np.int64) << b) + r + 1) - 1
    if k and idx[-1] >= universe:
        raise MalformedPayloadError(f"index {int(idx[-1])} outside a universe of {universe}")
    return idx
