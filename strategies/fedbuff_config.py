"""FedBuff's settings and which strategies can aggregate its buffer, apart from the
aggregator so the config schema and the config checks import no Flower."""

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


#: Flower strategies whose aggregate is a weighted sum of the replies (class names).
LINEAR_STRATEGY_NAMES = ("FedAvg", "FedAvgM", "FedProx", "FedAdam", "FedYogi", "FedAdagrad")

#: Why the known non-linear Flower strategies cannot aggregate a buffer of stale deltas.
NONLINEAR_REASONS = {
    "FedMedian": "takes a coordinate-wise median, so a staleness weight would not scale an update's effect",
    "FedTrimmedAvg": "trims the extreme values of each coordinate, so down-weighted stale deltas would be trimmed as outliers",
    "Krum": "selects replies by their distances to each other; scaled stale deltas distort those distances",
    "MultiKrum": "selects replies by their distances to each other; scaled stale deltas distort those distances",
    "Bulyan": "selects and trims replies by distance; scaled stale deltas distort both",
    "QFedAvg": "reweights replies by each device's loss on the current model, which a stale device never saw",
}


def linear_refusal(name: str) -> str:
    """Why the strategy class ``name`` cannot be FedBuff's aggregator (the refusal's text)."""
    why = NONLINEAR_REASONS.get(name)
    if why is None and "DifferentialPrivacy" in name:
        why = "clips and noises a round of sampled clients; its privacy accounting assumes synchronous rounds"
    if why is None:
        why = "is not known to aggregate linearly (a weighted sum of the replies)"
    return (
        f"mode=async needs a strategy whose aggregate is a weighted sum of the replies ({', '.join(LINEAR_STRATEGY_NAMES)}): "
        f"only then does a staleness-weighted delta enter the step in proportion to its weight; {name} {why}"
    )
