"""The privacy budget of a run with Flower's fixed-clipping DP wrappers: epsilon per round.

Flower's ``DifferentialPrivacyClientSideFixedClipping`` / ``...ServerSideFixedClipping``
clip each device's update to L2 norm ``C`` and add Gaussian noise of standard deviation
``z * C / m`` to the average of the ``m`` sampled updates: each round is a Gaussian
mechanism with noise multiplier ``z`` on the sum (sensitivity ``C``). Flower samples
``m`` of the ``N`` devices uniformly each round; the ledger accounts for that as Poisson
sampling with rate ``q = m / N`` under add-or-remove-one adjacency, the standard model
of DP-FedAvg (McMahan et al. 2018; TF Privacy's and Opacus's accountants do the same for
fixed-size batches). With ``q = 1`` (every device every round) there is no amplification.

Epsilon at the configured ``delta`` after ``r`` rounds comes from ``dp-accounting``'s
RDP accountant composing ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` ``r`` times.
Every round counts as a release (an upper bound when a round is abandoned). The noise is
calibrated for equal weights: with FedAvg's example weighting a device holding more than
the average number of examples moves the average by more than ``C / m``.

Flower 1.41+ has its own accountant inside the wrappers (``accountant=``), but only for
no-amplification sampling and equal-weight FedAvg; this ledger only observes the
wrapper's settings, so it works for any wrapped strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

ACCOUNTANT = "dp-accounting RDP; Poisson-sampled Gaussian; add-or-remove-one adjacency"


@dataclass(frozen=True)
class PrivacyLedger:
    """Epsilon at ``delta`` after each round of a Gaussian mechanism sampled at ``sampling_rate``."""

    noise_multiplier: float
    sampling_rate: float
    delta: float

    def __post_init__(self) -> None:
        if not 0 < self.sampling_rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], got {self.sampling_rate}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.delta}")

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon after ``rounds`` releases (``inf`` without noise)."""
        if rounds < 1:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant

        event = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier))
        accountant = RdpAccountant()
        accountant.compose(event, rounds)
        return float(accountant.get_epsilon(self.delta))

    def report(self, rounds: int) -> dict:
        """The ``privacy`` section of results.json."""
        return {
            "accountant": ACCOUNTANT,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "epsilon": [{"round": r, "epsilon": self.epsilon_after(r)} for r in range(1, rounds + 1)],
        }


def privacy_ledger(strategy: Strategy, num_nodes: int, delta: float) -> PrivacyLedger | None:
    """The ledger of the fixed-clipping DP wrapper in ``strategy``'s chain, or None without one."""
    current: object | None = strategy
    while current is not None:
        if isinstance(current, (DifferentialPrivacyClientSideFixedClipping, DifferentialPrivacyServerSideFixedClipping)):
            rate = min(1.0, current.num_sampled_clients / num_nodes)
            return PrivacyLedger(float(current.noise_multiplier), rate, delta)
        current = vars(current).get("strategy")  # the wrapped strategy, if this is a wrapper
    return None
