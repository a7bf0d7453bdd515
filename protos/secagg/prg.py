"""The mask PRG: a 32-byte seed -> a vector of uint32 words (ChaCha20 keystream).

ChaCha20 (RFC 7539) from ``cryptography`` (OpenSSL) is a standard stream cipher that
runs at gigabytes per second; its keystream, read as little-endian uint32 words, gives
the mask by rejection sampling: words at or above the largest multiple of ``M`` below
``2**32`` are skipped and the rest reduced modulo ``M``, so every mask value is exactly
uniform modulo ``M`` (skips are rare: fewer than ``M / 2**32`` of the words, 6e-6 at
n = 100 8-bit devices). Both ends read the same keystream, so they skip the same words.
The nonce is fixed: every seed is a fresh per-round, per-purpose HKDF output
(:mod:`fedge.protos.secagg.keys`).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_NONCE = bytes(16)  # 4-byte block counter 0, 12-byte nonce 0


def words(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random uint32 words from the 32-byte ``seed``."""
    if len(seed) != 32:
        raise ValueError(f"PRG seed must be 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * length))
    return np.frombuffer(stream, dtype="<u4").astype(np.uint32, copy=False)


def rejection_limit(modulus: int) -> int:
    """The largest multiple of ``modulus`` at most ``2**32``: words below it are kept."""
    return ((1 << 32) // modulus) * modulus


def mask_words(seed: bytes, length: int, modulus: int) -> np.ndarray:
    """``length`` keystream words below :func:`rejection_limit` (uint32, not yet reduced).

    Reduced modulo ``modulus`` they are exactly uniform; as they are, they can be summed
    (in uint64) and reduced once (:class:`fedge.protos.secagg.masks.MaskSum`), which
    saves one division per value per mask. ``2 <= modulus <= 2**32``.
    """
    if modulus == 1 << 32:
        return words(seed, length)
    limit = np.uint32(rejection_limit(modulus))
    drawn = length + 64 + length // 1024  # enough for all but a ~2**-64 share of seeds
    while True:
        stream = words(seed, drawn)  # a longer draw extends the same keystream
        rejected = np.flatnonzero(stream >= limit)
        if rejected.size == 0 or rejected[0] >= length:  # nothing to skip before `length`
            return stream[:length]
        if rejected.size <= 256:  # the usual case (a few per million): join the runs between them
            runs = np.split(stream, rejected)
            kept = np.concatenate([runs[0], *(run[1:] for run in runs[1:])])
        else:
            kept = stream[stream < limit]
        if kept.size >= length:
            return kept[:length]
        drawn *= 2


def mask(seed: bytes, length: int, modulus: int) -> np.ndarray:
    """``length`` exactly uniform values modulo ``modulus`` (uint64)."""
    return mask_words(seed, length, modulus).astype(np.uint64) % np.uint64(modulus)
