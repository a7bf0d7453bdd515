"""The typed hook a :class:`~fedge.server.grid.FedgeGrid` calls around each delivery.

The production Grid knows nothing of simulated devices; it only offers this interface.
An observer (``fedge-sim``'s device simulator,
:class:`fedge.simulations.devices.simulator.DeviceSimulator`) is asked, per task,
whether the node can be reached at all, and, per training round, what each answer
cost and whether it came too late. Its verdicts become failure replies; the bytes the
Grid counts stay the Grid's own. ``fedge-server`` runs without an observer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingDelivery:
    """What one node really did for one training task, as the Grid saw it."""

    node_id: int
    downlink_bytes: int  # serialised Task sent to it
    uplink_bytes: int  # serialised Update it answered with
    samples: int  # training examples it reports (``train_samples``: forward + backward)


@dataclass(frozen=True)
class RoundCosts:
    """An observer's totals of one training round (simulated, not measured)."""

    time_s: float  # round time: slowest answer waited for, or the deadline if someone was dropped
    energy_j: float  # joules of every node that worked, stragglers included
    stragglers: int  # answers past the deadline, turned into failure replies
    unavailable: int  # sampled nodes that were unreachable, never sent their task


class DeliveryObserver(ABC):
    """Decides reachability and lateness of deliveries; keeps its own per-round costs."""

    @abstractmethod
    def covers(self, node_id: int) -> bool:
        """Can this observer judge ``node_id``? (A Grid refuses an observer missing a node.)"""

    @abstractmethod
    def offline_reason(self, node_id: int, server_round: int) -> str | None:
        """``None`` if ``node_id`` can be sent its task in ``server_round``; otherwise why not
        (the Grid sends nothing and gives the strategy a failure reply with this reason)."""

    @abstractmethod
    def settle_training(self, server_round: int, deliveries: Sequence[TrainingDelivery]) -> list[str | None]:
        """Close a training round: per delivery ``None`` (on time) or why it is dropped.

        Called once per training round the Grid pushed, even with no deliveries (every
        sampled node unreachable), so an observer's clock can move on.
        """

    @abstractmethod
    def round_costs(self, server_round: int) -> RoundCosts:
        """The totals of ``server_round`` so far."""
