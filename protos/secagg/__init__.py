"""Secure aggregation (SecAgg+, Bell et al. 2020): the pieces a device and the server share.

One module per idea: :mod:`.shamir` (t-of-n sharing over GF(2**127 - 1)), :mod:`.keys`
(X25519 agreement, HKDF, the secrets a device shares), :mod:`.aead`
(ChaCha20-Poly1305 for shares), :mod:`.prg` (seed -> mask vector), :mod:`.graph` (the
round's k-regular neighbour graph), :mod:`.ring` (arithmetic and packing modulo
``2**m``), :mod:`.quantise` (clip, stochastic rounding, headroom), :mod:`.coordinates`
(the sparse variant's shared random-k coordinates), :mod:`.params` (the round's
:class:`~fedge.protos.v1.secagg_pb2.SecAggSetup`, checked). The device's stages live in
:mod:`fedge.client.secagg`, the server's in :mod:`fedge.strategies.secagg`.

Needs ``cryptography`` (the ``client`` and ``server`` extras), never flwr or torch.
"""

from fedge.protos.secagg.errors import SecAggError

#: Key of a secure-aggregation stage request (serialised SecAggRequest) in a Task's config.
REQUEST_KEY = "fedge.secagg"

__all__ = ["REQUEST_KEY", "SecAggError"]
