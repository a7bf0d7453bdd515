"""FedBuff's settings, apart from the aggregator so the config schema imports no Flower."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.strategies.staleness import STALENESS_RULES, StalenessRule


@dataclass
class FedBuffConfig:
    """FedBuff's knobs (the ``mode`` config group adds its own on top).

    ``buffer_size`` (K): updates per aggregation step. Small K = many small steps with
    little staleness averaging; FedBuff used K = 10 of 1000 concurrent devices; with a
    fleet of 10-100, K = 2-5 works. ``concurrency``: devices training at once (at most
    the fleet); more means more staleness. ``staleness``/``staleness_exponent``: the
    weighting rule (:mod:`fedge.strategies.staleness`). ``max_staleness``: updates
    older than this many versions are dropped (counted); raise it when slow devices
    should still count.
    """

    buffer_size: int = 3
    concurrency: int = 5
    staleness: str = "polynomial"
    staleness_exponent: float = 0.5
    max_staleness: int = 20

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot work."""
        if self.buffer_size < 1:
            raise ValueError(f"mode.buffer_size must be >= 1, got {self.buffer_size}")
        if self.concurrency < 1:
            raise ValueError(f"mode.concurrency must be >= 1, got {self.concurrency}")
        if self.staleness not in STALENESS_RULES:
            raise ValueError(f"mode.staleness must be one of {STALENESS_RULES}, got {self.staleness!r}")
        if not self.staleness_exponent >= 0:
            raise ValueError(f"mode.staleness_exponent must be >= 0, got {self.staleness_exponent}")
        if self.max_staleness < 0:
            raise ValueError(f"mode.max_staleness must be >= 0, got {self.max_staleness}")

    def rule(self) -> StalenessRule:
        return StalenessRule(self.staleness, self.staleness_exponent)
