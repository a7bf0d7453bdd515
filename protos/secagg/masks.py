"""The masks: a device's self-mask and its pairwise masks, which cancel in the sum.

Device ``u`` adds ``PRG(self seed)`` and, for each neighbour ``v`` it exchanged shares
with, ``+PRG(s_uv)`` if ``u < v`` else ``-PRG(s_uv)``, where ``s_uv`` is derived from the
X25519 agreement of their mask keys (the same on both ends), so pairwise masks cancel
when both ``u`` and ``v`` are in the sum. The server removes the rest: survivors'
self-masks (seeds rebuilt from shares) and the masks survivors added for neighbours that
dropped (their mask keys rebuilt from shares).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.protos.secagg import keys, prg, ring


def self_mask(seed_secret: int, server_round: int, length: int, modulus: int) -> np.ndarray:
    return prg.mask(keys.self_mask_seed(seed_secret, server_round), length, modulus)


def pairwise_mask(
    own: X25519PrivateKey, own_id: int, peer_public: bytes, peer_id: int, server_round: int, length: int, modulus: int
) -> np.ndarray:
    """What ``own_id`` adds for ``peer_id`` (already negated when ``own_id > peer_id``)."""
    seed = keys.agree(own, peer_public, "pairwise-mask", server_round)
    mask = prg.mask(seed, length, modulus)
    if own_id < peer_id:
        return mask
    return ring.subtract(np.zeros(length, dtype=np.uint64), mask, modulus)
