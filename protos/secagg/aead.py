"""Authenticated encryption of shares: ChaCha20-Poly1305 from ``cryptography``.

The associated data binds round, sender and receiver, so a share replayed into
another round or redirected to another device fails authentication.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedge.protos.secagg.errors import SecAggError

NONCE_BYTES = 12
TAG_BYTES = 16


def associated_data(server_round: int, sender: int, receiver: int) -> bytes:
    return b"fedge/secagg/v1/share" + b"".join(v.to_bytes(8, "big") for v in (server_round, sender, receiver))


def seal(key: bytes, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
    """``(nonce, ciphertext)`` of ``plaintext`` under the 32-byte ``key``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext, or :class:`SecAggError` when the nonce, tag or associated data is wrong."""
    if len(nonce) != NONCE_BYTES:
        raise SecAggError(f"nonce is {len(nonce)} bytes, expected {NONCE_BYTES}")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise SecAggError("share does not authenticate (wrong key, round, sender or receiver, or tampered)") from None
