"""Integer updates for masking: clip, scale, stochastic rounding, and headroom.

A coordinate ``x`` is clipped to ``[-clip, clip]`` and mapped to one of
``L = 2**value_bits - 1`` evenly spaced levels, rounding up with probability equal to
the distance from the level below (unbiased: ``E[dequantise(quantise(x))] = x``). A sum
of ``n`` such integers is at most ``n * L``, so arithmetic modulo
``modulus(value_bits, n) = n * L + 1`` never wraps and the server's sum is exact.

Tuning: ``clip`` trades clipping error (too small) against rounding error (too large,
``step = 2 * clip / L``); pick it near the largest coordinates of typical updates (error
feedback carries what was clipped or rounded away). ``value_bits`` of 8 keeps the
masked vector at ``log2(n * 255 + 1)`` bits per coordinate (8 + log2(n)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.ring import MAX_MODULUS


def modulus(value_bits: int, n: int) -> int:
    """The smallest ring in which ``n`` values in ``[0, 2**value_bits - 1]`` sum without wrapping.

    ``n * (2**value_bits - 1) + 1``: the sum's largest value plus one. It is odd, not a
    power of two: a masked value then costs ``log2(M)`` bits on the wire
    (:mod:`fedge.protos.secagg.ring`), 14.64 at n = 100 8-bit devices where
    ``8 + ceil(log2 n)`` bits would cost 15.
    """
    if n < 1:
        raise SecAggError(f"need at least one contributor, got {n}")
    m = n * ((1 << value_bits) - 1) + 1
    if m > MAX_MODULUS:
        raise SecAggError(f"{n} devices of {value_bits}-bit values need a modulus of {m} > 2**32; lower value_bits")
    return m


@dataclass(frozen=True)
class Quantiser:
    """``value_bits``-bit stochastic quantisation of values in ``[-clip, clip]``."""

    value_bits: int
    clip: float

    def __post_init__(self) -> None:
        if not 1 <= self.value_bits <= 24:
            raise SecAggError(f"value_bits must be in 1..24, got {self.value_bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"clip must be a positive finite number, got {self.clip}")

    @property
    def levels(self) -> int:
        """The largest integer a coordinate maps to (``2**value_bits - 1``)."""
        return (1 << self.value_bits) - 1

    @property
    def step(self) -> float:
        """Distance between two levels, in the update's units."""
        return 2.0 * self.clip / self.levels

    def quantise(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Integers in ``[0, levels]`` (uint32), unbiased for values inside the range."""
        x = np.clip(np.asarray(values, dtype=np.float64), -self.clip, self.clip)
        level = (x + self.clip) / self.step
        q = np.floor(level + rng.random(level.shape))
        return np.clip(q, 0, self.levels).astype(np.uint32)

    def dequantise(self, q: np.ndarray) -> np.ndarray:
        """What ``quantise`` integers stand for (float64)."""
        return np.asarray(q, dtype=np.float64) * self.step - self.clip

    def dequantise_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        """The sum of ``count`` values from the sum of their integers (float64)."""
        return np.asarray(total, dtype=np.float64) * self.step - count * self.clip
