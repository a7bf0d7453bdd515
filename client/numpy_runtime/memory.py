"""Bytes the numpy runtime keeps for the backward pass: a deterministic count.

The numpy twin of :class:`fedge.client.memory.ActivationMeter`: every layer's cache
(the arrays its backward pass needs) is counted from the forward pass that keeps it
until the backward pass through that layer frees it. Arrays are counted by the buffer
they live in (views of one buffer, e.g. a ReLU's output that the next conv also keeps,
count once), and the network's own tensors (weights) are not activations. Peak
training bytes = ``param_bytes`` (weights + gradients + optimiser state) + the peak of
this count, the same formula as the torch runtime's, so a memory budget means the
same on both runtimes. The counts are not byte-for-byte torch's (torch keeps a few
different tensors, e.g. for its own checkpointing), but they are exact for what this
runtime keeps and identical from run to run.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class CacheMeter:
    """Live and peak bytes of the arrays held in layer caches (network tensors excluded)."""

    def __init__(self, exclude: Iterable[np.ndarray] = ()) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self._held: dict[int, list[int]] = {}  # id(root buffer) -> [bytes, references]
        self._exclude = {id(_root(a)) for a in exclude}

    def _arrays(self, cache: tuple) -> list[np.ndarray]:
        return [_root(a) for a in cache if isinstance(a, np.ndarray)]

    def keep(self, cache: tuple) -> None:
        """Count a cache made by a forward pass."""
        for root in self._arrays(cache):
            key = id(root)
            if key in self._exclude:
                continue
            entry = self._held.get(key)
            if entry is None:
                self._held[key] = [root.nbytes, 1]
                self.live_bytes += root.nbytes
                self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            else:
                entry[1] += 1

    def release(self, cache: tuple) -> None:
        """Uncount a cache after the backward pass through its layer."""
        for root in self._arrays(cache):
            entry = self._held.get(id(root))
            if entry is None:
                continue
            entry[1] -= 1
            if entry[1] == 0:
                self.live_bytes -= entry[0]
                del self._held[id(root)]


def param_bytes(tensors: dict[str, np.ndarray], trainable: Iterable[str], optimiser_slots: int) -> int:
    """Bytes of the weights, plus gradients and ``optimiser_slots`` state tensors of each trainable one."""
    train = set(trainable)
    return sum(a.nbytes * (2 + optimiser_slots if name in train else 1) for name, a in tensors.items())
