"""One round's broadcast, decoded once for every simulated device of a process.

A simulation worker runs many clients of a round on the same model payload (the Grid
sends it once per delivery, :mod:`fedge.simulations.broadcast`). Each device still
checks the broadcast against its own model, but decoding the same bytes again for every
client (parse checks, a copy of every tensor, the finiteness scan: ~0.1-0.3 ms per
client-round for a 38k-weight CNN) was the largest piece of a client's overhead past
its training. :class:`SharedBroadcast` runs the safe decoder
(:func:`~fedge.protos.codecs.decode_update`) once per (model layout, expected kind) and
hands every client with that layout the same result: the same arrays, or the same
error. The arrays are read-only, so no client can change what the next one receives.

Written by hand: a memo of one function call, keyed by what that call checks.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.protos.codecs import decode_update
from fedge.protos.v1 import tensor_pb2

#: What decoding checks a broadcast against: the expected kind and each tensor's name, shape, dtype.
Layout = tuple[int, tuple[tuple[str, tuple[int, ...], str], ...]]


class SharedBroadcast:
    """A parsed model payload (``CompressedUpdate``) shared by the tasks of one delivery."""

    def __init__(self, model: tensor_pb2.CompressedUpdate) -> None:
        self.model = model
        self._decoded: dict[Layout, dict[str, np.ndarray] | Exception] = {}

    def decode(self, reference: Mapping[str, np.ndarray], expected_kind: int) -> dict[str, np.ndarray]:
        """``decode_update(self.model, reference, expected_kind=expected_kind)``, computed once
        per layout of ``reference``; the arrays are read-only (shared by every caller)."""
        layout: Layout = (expected_kind, tuple((k, tuple(v.shape), v.dtype.str) for k, v in reference.items()))
        decoded = self._decoded.get(layout)
        if decoded is None:
            try:
                decoded = decode_update(self.model, reference, expected_kind=expected_kind)
                for array in decoded.values():
                    array.flags.writeable = False
            except Exception as exc:  # every client of this layout gets the same refusal
                decoded = exc
            self._decoded[layout] = decoded
        if isinstance(decoded, Exception):
            raise decoded
        return decoded
