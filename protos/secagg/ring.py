"""The ring ``Z_M`` (any ``2 <= M <= 2**32``) of masked values, and their wire packing.

Masked values are uniform modulo ``M``, so their least possible size is ``log2(M)`` bits
each. With ``M = n * levels + 1`` (:func:`fedge.protos.secagg.quantise.modulus`) that is
14.64 bits at n = 100 8-bit devices, where the next power of two costs 15. The values
travel in groups: ``g`` values ``d_0 .. d_{g-1}`` form the base-``M`` number
``sum(d_i * M**(g - 1 - i))``, written in ``B = bits(M**g - 1)`` bits (MSB first, groups
back to back); ``g`` (at most :data:`MAX_GROUP_BITS` bits) minimises ``B / g``: 14.67
bits a value at n = 100, 11.33 at n = 10, 17.96 at n = 1,000. The last group is padded
with zero values (at most ``B - 1`` wasted bits).

The group numbers are multi-word integers held in 32-bit limbs (uint64 arrays, one per
limb, vectorised over groups), so packing costs ``limbs`` numpy passes per value.
Sums modulo ``M`` are :class:`fedge.protos.secagg.masks.MaskSum`'s.
Written by hand: numpy has no packing for widths other than 1 bit,
``fedge.protos.codecs.bitpack`` stops at 8 bits, and no maintained library packs
base-``M`` digits.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fedge.protos.secagg.errors import SecAggError

#: Largest modulus (values and masks are uint32 words).
MAX_MODULUS = 1 << 32
#: Largest group, in bits (8 limbs of 32 bits).
MAX_GROUP_BITS = 256
_LIMB = 32
_LIMB_MASK = np.uint64((1 << _LIMB) - 1)


def check_modulus(modulus: int) -> None:
    if not 2 <= modulus <= MAX_MODULUS:
        raise SecAggError(f"modulus must be in 2..2**32, got {modulus}")


@functools.lru_cache(maxsize=64)
def group_shape(modulus: int) -> tuple[int, int]:
    """``(g, B)``: values per group and bits per group, ``B / g`` smallest (ties: smaller g)."""
    check_modulus(modulus)
    best = (1, (modulus - 1).bit_length())
    for g in range(2, MAX_GROUP_BITS + 1):
        bits = (modulus**g - 1).bit_length()
        if bits > MAX_GROUP_BITS:
            break
        if bits * best[0] < best[1] * g:
            best = (g, bits)
    return best


def packed_size(count: int, modulus: int) -> int:
    """Bytes of ``count`` values modulo ``modulus`` on the wire."""
    g, bits = group_shape(modulus)
    return (math.ceil(count / g) * bits + 7) // 8


def pack(values: np.ndarray, modulus: int) -> bytes:
    """``values`` (each below ``modulus``) in base-``modulus`` groups (see the module docstring)."""
    g, bits = group_shape(modulus)
    values = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if values.size and int(values.max()) >= modulus:
        raise SecAggError("a value to pack is not below the modulus")
    groups = math.ceil(values.size / g)
    padded = np.zeros(groups * g, dtype=np.uint64)
    padded[: values.size] = values
    digits = padded.reshape(groups, g)
    limbs = np.zeros((math.ceil(bits / _LIMB), groups), dtype=np.uint64)  # limb 0 least significant
    m = np.uint64(modulus)
    for i in range(g):  # Horner: number = number * M + digit, carried limb by limb
        carry = digits[:, i].copy()
        for j in range(limbs.shape[0]):
            t = limbs[j] * m + carry  # < 2**64: limb, carry < 2**32 and M <= 2**32
            limbs[j] = t & _LIMB_MASK
            carry = t >> np.uint64(_LIMB)
    return _limbs_to_bits(limbs, bits)


def unpack(data: bytes, count: int, modulus: int) -> np.ndarray:
    """The ``count`` values packed in ``data`` (uint64), or :class:`SecAggError` if ``data``
    has the wrong size or is not a packing (a group's number at or above ``M**g``, or
    padding values that are not 0)."""
    g, bits = group_shape(modulus)
    if len(data) != packed_size(count, modulus):
        raise SecAggError(f"masked vector is {len(data)} bytes; {count} values modulo {modulus} need {packed_size(count, modulus)}")
    groups = math.ceil(count / g)
    limbs = _bits_to_limbs(data, groups, bits)
    m = np.uint64(modulus)
    digits = np.empty((groups, g), dtype=np.uint64)
    for i in range(g - 1, -1, -1):  # long division by M, most significant limb first
        remainder = np.zeros(groups, dtype=np.uint64)
        for j in range(limbs.shape[0] - 1, -1, -1):
            current = (remainder << np.uint64(_LIMB)) | limbs[j]  # remainder < M <= 2**32
            limbs[j] = current // m
            remainder = current % m
        digits[:, i] = remainder
    if limbs.any():
        raise SecAggError(f"masked vector holds a group at or above {modulus}**{g}")
    flat = digits.ravel()
    if flat[count:].any():
        raise SecAggError("masked vector's padding values are not 0")
    return flat[:count]


def _limbs_to_bits(limbs: np.ndarray, bits: int) -> bytes:
    """Each group's number (limbs, least significant first) as ``bits`` bits, MSB first."""
    words = np.ascontiguousarray(limbs[::-1].T, dtype=">u4")  # (groups, limbs), most significant limb first
    flat = np.unpackbits(words.view(np.uint8).reshape(words.shape[0], -1), axis=1)
    return np.packbits(flat[:, flat.shape[1] - bits :].ravel()).tobytes()


def _bits_to_limbs(data: bytes, groups: int, bits: int) -> np.ndarray:
    width = math.ceil(bits / _LIMB) * _LIMB
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=groups * bits).reshape(groups, bits)
    padded = np.zeros((groups, width), dtype=np.uint8)
    padded[:, width - bits :] = flat
    words = np.packbits(padded, axis=1).view(">u4").astype(np.uint64)  # (groups, limbs), MSB limb first
    return np.ascontiguousarray(words.T[::-1])
