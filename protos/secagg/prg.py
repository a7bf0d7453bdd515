"""The mask PRG: a 32-byte seed -> a vector of uint32 words (ChaCha20 keystream).

ChaCha20 (RFC 7539) from ``cryptography`` (OpenSSL) is a standard stream cipher that
runs at gigabytes per second; its keystream, read as little-endian uint32 words and
reduced modulo ``2**m`` (the low ``m`` bits), is the mask. The nonce is fixed: every
seed is a fresh per-round, per-purpose HKDF output (:mod:`fedge.protos.secagg.keys`).
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


def mask(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``length`` uniform values modulo ``2**modulus_bits`` (uint32)."""
    out = words(seed, length)
    if modulus_bits < 32:
        out = out & np.uint32((1 << modulus_bits) - 1)
    return out
