"""Arithmetic modulo ``2**m`` (m <= 32) on uint32 vectors, and packing m bits per value.

Masked values are uniform modulo ``2**m``, so they travel with exactly ``m`` bits each
(MSB first). Written by hand: numpy has no packing for widths other than 1 bit and
``fedge.protos.codecs.bitpack`` stops at 8.
"""

from __future__ import annotations

import numpy as np

from fedge.protos.secagg.errors import SecAggError

MAX_BITS = 32


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """``values mod 2**bits`` as uint32 (uint32 arithmetic already wraps at 2**32)."""
    values = np.asarray(values, dtype=np.uint32)
    return values if bits == MAX_BITS else values & np.uint32((1 << bits) - 1)


def add(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    return reduce(np.add(a, b, dtype=np.uint32), bits)


def subtract(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    return reduce(np.subtract(a, b, dtype=np.uint32), bits)


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each below ``2**bits``) as ``bits``-bit fields, MSB first."""
    if not 1 <= bits <= MAX_BITS:
        raise SecAggError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    values = np.ascontiguousarray(values, dtype=np.uint32).ravel()
    if bits in (8, 16, 32):
        return values.astype(f">u{bits // 8}").tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    matrix = ((values[:, None] >> shifts) & np.uint32(1)).astype(np.uint8)
    return np.packbits(matrix.ravel()).tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` values packed in ``data`` (:class:`SecAggError` on a wrong size)."""
    if not 1 <= bits <= MAX_BITS:
        raise SecAggError(f"bits must be in 1..{MAX_BITS}, got {bits}")
    if len(data) != packed_size(count, bits):
        raise SecAggError(f"masked vector is {len(data)} bytes; {count} values of {bits} bits need {packed_size(count, bits)}")
    if bits in (8, 16, 32):
        return np.frombuffer(data, dtype=f">u{bits // 8}").astype(np.uint32)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits).reshape(count, bits)
    weights = (np.uint32(1) << np.arange(bits - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
    return (flat.astype(np.uint32) * weights).sum(axis=1, dtype=np.uint32)
