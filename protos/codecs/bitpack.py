"""Pack unsigned integers of ``bits`` bits (1..8) into bytes, and back.

Vectorised with numpy: values are laid out as a bit matrix (MSB first) and packed with
``np.packbits``; the 8-bit case is a plain byte copy. Written by hand because numpy has
no sub-byte integer type.
"""

from __future__ import annotations

import numpy as np

from fedge.protos.codecs.errors import MalformedPayloadError


def packed_size(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack a 1-D array of integers in ``[0, 2**bits)`` into bytes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    values = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    if bits == 8:
        return values.tobytes()
    if bits == 1:
        return np.packbits(values).tobytes()
    if 8 % bits == 0:  # 2 or 4 bits: whole values per byte, MSB first
        per_byte = 8 // bits
        padded = np.zeros(-(-values.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: values.size] = values
        groups = padded.reshape(-1, per_byte)
        out = np.zeros(groups.shape[0], dtype=np.uint8)
        for j in range(per_byte):
            out |= groups[:, j] << np.uint8(bits * (per_byte - 1 - j))
        return out.tobytes()
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    matrix = (values[:, None] >> shifts) & 1
    return np.packbits(matrix.ravel()).tobytes()


def unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` values of ``bits`` bits packed in ``data`` (uint8 array; for 8 bits a
    read-only view of ``data``, no copy)."""
    if not 1 <= bits <= 8:
        raise MalformedPayloadError(f"bits must be in 1..8, got {bits}")
    if len(data) != packed_size(count, bits):
        raise MalformedPayloadError(
            f"packed payload is {len(data)} bytes, {count} values of {bits} bits need {packed_size(count, bits)}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return raw
    if 8 % bits == 0 and bits > 1:
        per_byte = 8 // bits
        mask = np.uint8((1 << bits) - 1)
        shifts = np.arange(per_byte - 1, -1, -1, dtype=np.uint8) * np.uint8(bits)
        return ((raw[:, None] >> shifts) & mask).ravel()[:count]
    flat = np.unpackbits(raw, count=count * bits)
    if bits == 1:
        return flat
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (flat.reshape(count, bits) * weights).sum(axis=1, dtype=np.uint8)
