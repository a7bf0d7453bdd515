"""Key agreement and key derivation: X25519 and HKDF-SHA256 from ``cryptography``.

Each device holds per round:

* a *cipher* X25519 key pair: with a neighbour's cipher public key it derives the
  ChaCha20-Poly1305 key that encrypts the shares it sends that neighbour;
* a *mask secret* (a 127-bit field element, so it can be Shamir-shared): HKDF turns it
  into the X25519 private key whose agreements with neighbours seed the pairwise masks;
  if the device drops out, the server rebuilds the secret from ``t`` shares and removes
  those masks;
* a *seed secret* (a field element too): HKDF turns it into the self-mask's PRG key.

Every derivation binds a purpose label and the round, so no key serves two uses.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedge.protos.secagg import shamir
from fedge.protos.secagg.errors import SecAggError

#: Bytes of an X25519 public key.
PUBLIC_KEY_BYTES = 32
#: Bytes of a seed commitment: SHA-256 truncated to 128 bits. Enough: a peer that wants a
#: wrong share of the seed to pass would need a 128-bit second preimage; the device that
#: commits could find a collision in 2**64 work, but gains nothing from it (a wrong seed
#: only spoils the sum, which its own input could do anyway).
COMMITMENT_BYTES = 16
_LABEL = b"fedge/secagg/v1/"


def derive(material: bytes, purpose: str, server_round: int, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``material`` for ``purpose`` in ``server_round`` (``length`` bytes)."""
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=server_round.to_bytes(8, "big"), info=_LABEL + purpose.encode()
    ).derive(material)


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def mask_private_key(mask_secret: int, server_round: int) -> X25519PrivateKey:
    """The X25519 key a device's pairwise masks come from, rebuilt from its mask secret."""
    return X25519PrivateKey.from_private_bytes(derive(shamir.to_bytes(mask_secret), "mask-key", server_round))


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(data: bytes) -> X25519PublicKey:
    """An X25519 public key from 32 raw bytes (:class:`SecAggError` otherwise)."""
    if len(data) != PUBLIC_KEY_BYTES:
        raise SecAggError(f"an X25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(data)}")
    return X25519PublicKey.from_public_bytes(data)


def agree(private: X25519PrivateKey, peer_public: bytes, purpose: str, server_round: int) -> bytes:
    """A 32-byte key both ends derive: HKDF of the X25519 shared secret.

    Low-order public keys (an all-zero shared secret) are refused.
    """
    try:
        shared = private.exchange(parse_public_key(peer_public))
    except ValueError as exc:
        raise SecAggError(f"key agreement failed: {exc}") from None
    return derive(shared, purpose, server_round)


def self_mask_seed(seed_secret: int, server_round: int) -> bytes:
    """The PRG key of a device's self-mask."""
    return derive(shamir.to_bytes(seed_secret), "self-mask", server_round)


def commitment(seed_secret: int, node_id: int, server_round: int) -> bytes:
    """Commitment (:data:`COMMITMENT_BYTES`) to a seed secret: a rebuilt seed is checked against it."""
    return hashlib.sha256(
        _LABEL + b"seed-commitment" + server_round.to_bytes(8, "big") + node_id.to_bytes(8, "big") + shamir.to_bytes(seed_secret)
    ).digest()[:COMMITMENT_BYTES]
