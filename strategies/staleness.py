"""How much a stale update counts: FedBuff's staleness weighting.

An update's *staleness* ``s`` is the number of model versions the server applied
between the version the device trained from and the version the update is applied to.
FedBuff (Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022, section 4) scales each update by ``1 / sqrt(1 + s)``: the polynomial rule
``(1 + s) ** -a`` with ``a = 0.5``. The constant rule weighs every update 1 (plain
asynchronous SGD); ``max_staleness`` (:class:`~fedge.strategies.fedbuff.FedBuffConfig`)
drops what is too old under either rule.

Tuning: ``a`` in [0.5, 1] is the usual range; larger ``a`` protects against very stale
updates from slow devices but shrinks the step size when many devices are slow.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Rule names ``mode.staleness`` accepts.
STALENESS_RULES = ("polynomial", "constant")


@dataclass(frozen=True)
class StalenessRule:
    """``weight(s) = (1 + s) ** -exponent`` (``polynomial``) or ``1`` (``constant``)."""

    kind: str = "polynomial"
    exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in STALENESS_RULES:
            raise ValueError(f"staleness rule must be one of {STALENESS_RULES}, got {self.kind!r}")
        if not self.exponent >= 0:
            raise ValueError(f"staleness exponent must be >= 0, got {self.exponent}")

    def weight(self, staleness: int) -> float:
        """The factor an update of ``staleness`` versions is scaled by, in (0, 1]."""
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        if self.kind == "constant":
            return 1.0
        return float((1.0 + staleness) ** -self.exponent)
