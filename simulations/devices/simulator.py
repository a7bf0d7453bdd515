"""Simulated device time, energy, availability and a round deadline, for any FedgeGrid.

:class:`DeviceSimulator` is a :class:`~fedge.server.delivery_observer.DeliveryObserver`
(the Grid's typed hook), so the local, Ray and gRPC backends all get it. Per training
round it

1. asks each sampled node's :class:`~fedge.simulations.devices.profile.DeviceProfile` whether it is
   online (``availability`` drawn from ``(seed, node, round)``, within
   ``online_hours`` at the simulated hour of day); an offline device never receives
   the task: no bytes, no time, no energy, a failure reply for the strategy;
2. after the real round ran, prices each device's work with its profile from the real
   serialised Task/Update sizes and the samples it reports (``train_samples``);
3. drops as stragglers the devices whose simulated time exceeds ``deadline_s``
   (0 = no deadline). A straggler's downlink and training happened (bytes counted,
   energy charged); its Update arrives after the round closed, so its uplink bytes and
   uplink energy are not counted and the strategy gets a failure reply.

The round's simulated time is the slowest answer the server waited for, or the
deadline when a straggler was dropped. The simulated clock starts at ``start_hour``
and advances by ``max(round time, round_interval_s)`` per round; it decides the hour
``online_hours`` is checked against. Federated evaluation tasks obey availability but
are not priced (fedge evaluates centrally by default).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.server.delivery_observer import DeliveryObserver, RoundCosts, TrainingDelivery
from fedge.simulations.devices.profile import DeviceProfile
from fedge.simulations.devices.trace import TracedDevice

#: Separates the availability random stream from the clients' training streams.
AVAILABILITY_STREAM = 0xA7A11AB1E
HOUR_S = 3600.0


@dataclass
class DeviceRound:
    """Simulated totals of one training round."""

    start_s: float  # simulated clock when the round started (seconds after start_hour)
    time_s: float = 0.0  # slowest answer waited for; the deadline if a straggler was dropped
    energy_j: float = 0.0  # every device that worked, stragglers included
    stragglers: int = 0  # devices past the deadline, their replies dropped
    unavailable: int = 0  # sampled devices that were offline


@dataclass
class DeviceTotals:
    """One device's simulated totals over the whole run."""

    profile: str
    sim_busy_s: float = 0.0  # simulated seconds it spent on tasks (stragglers: until done training)
    energy_j: float = 0.0
    train_samples: int = 0
    stragglers: int = 0  # rounds in which it missed the deadline
    unavailable: int = 0  # rounds in which it was sampled but offline


class DeviceSimulator(DeliveryObserver):
    """Prices rounds with per-node device profiles and enforces a simulated deadline.

    Parameters
    ----------
    profiles:
        Node id -> its device profile.
    seed:
        Availability draws come from ``numpy.random.default_rng([seed, node, round, ...])``,
        so they do not depend on sampling order or backend.
    deadline_s:
        Simulated seconds a round waits for answers; 0 = no deadline.
    start_hour:
        Simulated hour of day (0-24) at which round 1 starts.
    round_interval_s:
        Simulated seconds from one round's start to the next, at least.
    traced:
        Nodes whose availability is a trace's online intervals
        (:mod:`fedge.simulations.devices.trace`): online iff the round starts inside one.
    """

    def __init__(
        self,
        profiles: Mapping[int, DeviceProfile],
        seed: int = 0,
        deadline_s: float = 0.0,
        start_hour: float = 0.0,
        round_interval_s: float = 0.0,
        traced: Mapping[int, TracedDevice] | None = None,
    ) -> None:
        if deadline_s < 0:
            raise ValueError(f"deadline_s must be >= 0 (0 = none), got {deadline_s}")
        if not 0 <= start_hour < 24:
            raise ValueError(f"start_hour must be in [0, 24), got {start_hour}")
        if round_interval_s < 0:
            raise ValueError(f"round_interval_s must be >= 0, got {round_interval_s}")
        self.profiles = dict(profiles)
        self.seed = seed
        self.deadline_s = deadline_s
        self.start_hour = start_hour
        self.round_interval_s = round_interval_s
        self.traced = dict(traced or {})
        self.rounds: dict[int, DeviceRound] = {}
        self.totals = {n: DeviceTotals(p.name) for n, p in sorted(self.profiles.items())}
        self._clock_s = 0.0  # simulated end of the last finished round
        self._unavailable: dict[int, set[int]] = defaultdict(set)

    def round(self, server_round: int) -> DeviceRound:
        """The round's record (started now on the simulated clock if new)."""
        if server_round not in self.rounds:
            self.rounds[server_round] = DeviceRound(start_s=self._clock_s)
        return self.rounds[server_round]

    def hour_of(self, server_round: int) -> int:
        """Simulated hour of day (0-23) at the start of ``server_round``."""
        return int((self.start_hour * HOUR_S + self.round(server_round).start_s) // HOUR_S) % 24

    def is_available(self, node_id: int, server_round: int) -> bool:
        """Is ``node_id`` online in ``server_round``? Deterministic in (seed, node, round)."""
        profile = self._profile(node_id)
        if node_id in self.traced:
            return self.traced[node_id].online_at(self.round(server_round).start_s)
        draw = np.random.default_rng([self.seed, node_id, server_round, AVAILABILITY_STREAM]).random()
        return profile.online_at(self.hour_of(server_round)) and draw < profile.availability

    def mark_unavailable(self, node_id: int, server_round: int) -> None:
        """Record that a sampled node was offline (once per node and round)."""
        if node_id not in self._unavailable[server_round]:
            self._unavailable[server_round].add(node_id)
            self.round(server_round).unavailable += 1
            self.totals[node_id].unavailable += 1

    def settle(self, server_round: int, jobs: Sequence[TrainingDelivery]) -> list[float | None]:
        """Price a training round's jobs; per job its simulated seconds, or ``None`` if it
        missed the deadline (a straggler). Advances the simulated clock."""
        record = self.round(server_round)
        verdicts: list[float | None] = []
        for job in jobs:
            profile, totals = self._profile(job.node_id), self.totals[job.node_id]
            seconds = profile.round_seconds(job.downlink_bytes, job.samples, job.uplink_bytes)
            late = self.deadline_s > 0 and seconds > self.deadline_s
            sent = 0 if late else job.uplink_bytes  # a straggler's Update arrives after the round closed
            energy = profile.energy_joules(job.downlink_bytes, job.samples, sent)
            record.energy_j += energy
            totals.energy_j += energy
            totals.train_samples += job.samples
            totals.sim_busy_s += profile.round_seconds(job.downlink_bytes, job.samples, sent)
            if late:
                record.stragglers += 1
                totals.stragglers += 1
                record.time_s = self.deadline_s
                verdicts.append(None)
            else:
                record.time_s = max(record.time_s, seconds)
                verdicts.append(seconds)
        self._clock_s = record.start_s + max(record.time_s, self.round_interval_s)
        return verdicts

    # -- DeliveryObserver ----------------------------------------------------------
    def covers(self, node_id: int) -> bool:
        return node_id in self.profiles

    def offline_reason(self, node_id: int, server_round: int) -> str | None:
        if self.is_available(node_id, server_round):
            return None
        self.mark_unavailable(node_id, server_round)
        return f"node {node_id} is offline this round (device profile availability)"

    def settle_training(self, server_round: int, deliveries: Sequence[TrainingDelivery]) -> list[str | None]:
        reasons: list[str | None] = []
        for job, seconds in zip(deliveries, self.settle(server_round, deliveries), strict=True):
            if seconds is not None:
                reasons.append(None)
                continue
            profile = self.profiles[job.node_id]
            simulated = profile.round_seconds(job.downlink_bytes, job.samples, job.uplink_bytes)
            reasons.append(
                f"node {job.node_id} dropped as straggler: simulated {simulated:.3f} s "
                f"> server.round_deadline_s {self.deadline_s:g} s ({profile.name})"
            )
        return reasons

    def round_costs(self, server_round: int) -> RoundCosts:
        record = self.round(server_round)
        return RoundCosts(record.time_s, record.energy_j, record.stragglers, record.unavailable)

    def _profile(self, node_id: int) -> DeviceProfile:
        try:
            return self.profiles[node_id]
        except KeyError:
            raise KeyError(f"node {node_id} has no device profile") from None
