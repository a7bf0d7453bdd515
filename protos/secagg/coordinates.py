"""The sparse variant's coordinates: the same ``kept`` random positions on every device.

Masks only cancel if every device's masked vector lines up, so in a round all devices
send the same random-k positions, chosen from the round's ``coordinate_seed``; no index
bytes travel. The positions are the ``kept`` smallest keys of a ChaCha20 keystream
(ties broken by position), which every device computes identically, whatever its numpy.
"""

from __future__ import annotations

import numpy as np

from fedge.protos.secagg import prg
from fedge.protos.secagg.errors import SecAggError


def kept_coordinates(seed: bytes, length: int, kept: int) -> np.ndarray:
    """Ascending positions (int64) of the ``kept`` coordinates out of ``length``."""
    if not 0 < kept <= length:
        raise SecAggError(f"kept coordinates must be in 1..{length}, got {kept}")
    if kept == length:
        return np.arange(length, dtype=np.int64)
    keys = prg.words(seed, length).astype(np.uint64) << np.uint64(32) | np.arange(length, dtype=np.uint64)
    chosen = np.argpartition(keys, kept - 1)[:kept]
    return np.sort(chosen).astype(np.int64)
