"""Subsets of a list both ends know, as bitmaps: how SecAgg+ messages name neighbours.

A device's neighbours follow from the round's setup, so a message that names some of
them sends one bit each (``ceil(k / 8)`` bytes) instead of node ids. Bit ``i`` (byte
``i // 8``, least significant bit first) says whether ``among[i]`` is in the subset;
bits past the list must be 0. Per-member data then travels as fixed-size records in
list order (:func:`split_records`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from fedge.protos.secagg.errors import SecAggError


def encode(chosen: Collection[int], among: Sequence[int]) -> bytes:
    """The bitmap of ``chosen`` (all of them in ``among``) over ``among``."""
    chosen = set(chosen)
    if not chosen <= set(among):
        raise SecAggError("a subset names members outside its list")
    bits = np.array([v in chosen for v in among], dtype=np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def decode(data: bytes, among: Sequence[int]) -> tuple[int, ...]:
    """The members of ``among`` the bitmap ``data`` selects, in list order (:class:`SecAggError`
    for a bitmap of the wrong size or with bits set past the list)."""
    size = (len(among) + 7) // 8
    if len(data) != size:
        raise SecAggError(f"a bitmap over {len(among)} members is {size} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[len(among) :].any():
        raise SecAggError("bitmap has bits set past its list")
    return tuple(v for v, bit in zip(among, bits[: len(among)]) if bit)


def split_records(data: bytes, count: int, size: int, what: str) -> list[bytes]:
    """``count`` records of ``size`` bytes each, back to back in ``data`` (:class:`SecAggError` otherwise)."""
    if len(data) != count * size:
        raise SecAggError(f"{what}: {len(data)} bytes, expected {count} x {size}")
    return [data[i * size : (i + 1) * size] for i in range(count)]
