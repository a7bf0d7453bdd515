"""Authenticated encryption of share pairs: ChaCha20-Poly1305 from ``cryptography``.

A sealed share pair is the 32-byte plaintext (seed share, then mask-key share, 16
bytes each) encrypted and tagged: 48 bytes, nothing else on the wire.

The associated data binds round, sender and receiver, so a share replayed into
another round or redirected to another device fails authentication.

The nonce is derived, not sent: ``4 zero bytes + the sender's node id`` (8 bytes,
big-endian). That is safe because a nonce must never repeat under one key, and each
key seals exactly two messages: the key is HKDF of the X25519 agreement of the two
devices' *cipher* key pairs, which are fresh every round (a device makes a new pair
whenever it answers a setup, and answers a roster once per pair), bound to the round
by HKDF's salt; the two messages under it are ``u -> v`` and ``v -> u``, whose
nonces differ because their senders do. Saves 12 bytes per neighbour.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedge.protos.secagg.errors import SecAggError

TAG_BYTES = 16
#: Bytes of a share pair in the clear (two 16-byte Shamir shares).
PAIR_BYTES = 32
#: Bytes of a sealed share pair on the wire.
SEALED_BYTES = PAIR_BYTES + TAG_BYTES


def associated_data(server_round: int, sender: int, receiver: int) -> bytes:
    return b"fedge/secagg/v2/share" + b"".join(v.to_bytes(8, "big") for v in (server_round, sender, receiver))


def nonce(sender: int) -> bytes:
    """The 12-byte nonce of what ``sender`` seals (unique per key: see the module docstring)."""
    return bytes(4) + sender.to_bytes(8, "big")


def seal(key: bytes, sender: int, plaintext: bytes, associated: bytes) -> bytes:
    """The 48-byte sealed form of a 32-byte share pair, under the 32-byte ``key``."""
    if len(plaintext) != PAIR_BYTES:
        raise SecAggError(f"a share pair is {PAIR_BYTES} bytes, got {len(plaintext)}")
    return ChaCha20Poly1305(key).encrypt(nonce(sender), plaintext, associated)


def open_sealed(key: bytes, sender: int, sealed: bytes, associated: bytes) -> bytes:
    """The 32-byte share pair, or :class:`SecAggError` when the tag or associated data is wrong."""
    if len(sealed) != SEALED_BYTES:
        raise SecAggError(f"a sealed share pair is {SEALED_BYTES} bytes, got {len(sealed)}")
    try:
        return ChaCha20Poly1305(key).decrypt(nonce(sender), sealed, associated)
    except InvalidTag:
        raise SecAggError("share does not authenticate (wrong key, round, sender or receiver, or tampered)") from None
