"""The simulated fleet of an asynchronous run: event-driven simulated time over any FedgeGrid.

:class:`SimulatedFleet` is the :class:`~fedge.server.async_driver.AsyncFleet` of
``fedge-sim mode=async``. Launching a task runs it for real on the Grid (``local`` or
``ray``: real training, real serialised bytes); the Grid reports each delivery to this
fleet (it is the Grid's :class:`~fedge.server.delivery_observer.DeliveryObserver`), which
prices it with the device's profile (``seconds = downlink bits / downlink rate +
samples / samples_per_s + uplink bits / uplink rate``,
:meth:`~fedge.simulations.devices.profile.DeviceProfile.round_seconds`) and schedules its
completion at ``launch time + seconds`` in an event queue. The driver receives
completions in simulated-time order (ties: dispatch order), so the event order and the
final weights depend on the seed only, never on the backend or the machine's speed.

Availability: a traced device (:mod:`fedge.simulations.devices.trace`) is online within
its intervals, and a task still running when its interval ends is lost there. A
profiled device is online in a slot of ``availability_slot_s`` simulated seconds with
its profile's ``availability`` (drawn from ``(seed, node, slot)``) within its
``online_hours``; it is only checked when the device is picked. When nothing is in
flight and nobody is online, the clock jumps to the next time someone is.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from fedge.server.async_driver import AsyncFleet, Completion, FleetExhausted
from fedge.server.delivery_observer import DeliveryObserver, RoundCosts, TrainingDelivery
from fedge.server.grid import FedgeGrid
from fedge.simulations.devices.profile import DeviceProfile
from fedge.simulations.devices.simulator import AVAILABILITY_STREAM, HOUR_S, DeviceTotals
from fedge.simulations.devices.trace import TracedDevice

#: Slots scanned for a profiled device's next online time before it counts as never online.
MAX_SLOTS_AHEAD = 100_000


@dataclass(order=True)
class _Event:
    time_s: float
    dispatch: int
    node_id: int
    reply: Message | None
    reason: str


class SimulatedFleet(AsyncFleet, DeliveryObserver):
    """Simulated clock and availability for ``mode=async`` (see the module docstring).

    Parameters
    ----------
    grid:
        Runs the tasks (this fleet becomes its delivery observer).
    profiles:
        Node id -> its (speed-spread) profile; a :class:`TracedDevice` for traced nodes.
    seed:
        Availability draws come from ``(seed, node, slot)``.
    availability_slot_s:
        Simulated seconds a profiled device's availability draw holds.
    start_hour:
        Simulated hour of day (0-24) at time 0, for ``online_hours``.
    """

    def __init__(
        self,
        grid: FedgeGrid,
        profiles: Mapping[int, DeviceProfile | TracedDevice],
        seed: int = 0,
        availability_slot_s: float = 60.0,
        start_hour: float = 0.0,
    ) -> None:
        if not availability_slot_s > 0:
            raise ValueError(f"mode.availability_slot_s must be > 0, got {availability_slot_s}")
        self.grid = grid
        self.devices = dict(profiles)
        self.seed = seed
        self.slot_s = availability_slot_s
        self.start_hour = start_hour
        self.totals = {n: DeviceTotals(self._profile(n).name) for n in sorted(self.devices)}
        self.energy_j = 0.0
        self._now = 0.0
        self._events: list[_Event] = []
        self._priced: dict[int, float] = {}
        self._draws: dict[tuple[int, int], bool] = {}
        grid.observe_deliveries(self)

    def _profile(self, node: int) -> DeviceProfile:
        device = self.devices[node]
        return device.profile if isinstance(device, TracedDevice) else device

    # -- availability -----------------------------------------------------------------
    def online_at(self, node: int, t: float) -> bool:
        device = self.devices[node]
        if isinstance(device, TracedDevice):
            return device.online_at(t)
        hour = int((self.start_hour * HOUR_S + t) // HOUR_S) % 24
        return device.online_at(hour) and self._drawn_online(node, int(t // self.slot_s))

    def _drawn_online(self, node: int, slot: int) -> bool:
        key = (node, slot)
        if key not in self._draws:
            draw = np.random.default_rng([self.seed, node, slot, AVAILABILITY_STREAM]).random()
            self._draws[key] = bool(draw < self._profile(node).availability)
        return self._draws[key]

    def next_online(self, node: int, t: float) -> float | None:
        """The earliest time >= ``t`` at which ``node`` is online (None: never)."""
        device = self.devices[node]
        if isinstance(device, TracedDevice):
            return device.next_online(t)
        if device.availability <= 0:
            return None
        if self.online_at(node, t):
            return t
        slot = int(t // self.slot_s)
        for ahead in range(1, MAX_SLOTS_AHEAD):
            start = (slot + ahead) * self.slot_s
            if self.online_at(node, start):
                return start
        return None

    # -- AsyncFleet ----------------------------------------------------------------------
    def now_s(self) -> float:
        return self._now

    def ready_nodes(self) -> list[int]:
        return [n for n in sorted(self.devices) if self.online_at(n, self._now)]

    def launch(self, messages: list[Message]) -> None:
        ids = self.grid.push_messages(messages)
        replies = {r.metadata.group_id: r for r in self.grid.pull_messages(ids)}
        for message in messages:
            dispatch, node = int(message.metadata.group_id), message.metadata.dst_node_id
            reply = replies.get(message.metadata.group_id)
            seconds = self._priced.pop(dispatch, 0.0)
            done = self._now + seconds
            device = self.devices[node]
            ends = device.offline_after(self._now) if isinstance(device, TracedDevice) else math.inf
            if done > ends:
                reason = f"node {node} went offline at {ends:g} s (trace) before finishing at {done:.3f} s"
                heapq.heappush(self._events, _Event(ends, dispatch, node, None, reason))
            elif reply is None:
                heapq.heappush(self._events, _Event(done, dispatch, node, None, f"node {node} did not answer"))
            else:
                heapq.heappush(self._events, _Event(done, dispatch, node, reply, ""))

    def next_completion(self, idle_wanted: bool = False) -> Completion | None:
        if self._events and idle_wanted:
            busy = {e.node_id for e in self._events}
            woken = [t for t in (self.next_online(n, self._now) for n in sorted(self.devices) if n not in busy) if t is not None]
            if woken and self._now < min(woken) < self._events[0].time_s:
                self._now = min(woken)
                return None
        if self._events:
            event = heapq.heappop(self._events)
            self._now = max(self._now, event.time_s)
            return Completion(event.dispatch, event.node_id, event.reply, self._now, event.reason)
        times = [t for t in (self.next_online(n, self._now + 1e-9) for n in sorted(self.devices)) if t is not None]
        if not times:
            raise FleetExhausted(f"no device is online again after simulated {self._now:.1f} s")
        self._now = max(self._now, min(times))
        return None

    # -- DeliveryObserver: price what the Grid really delivered -------------------------
    def covers(self, node_id: int) -> bool:
        return node_id in self.devices

    def offline_reason(self, node_id: int, server_round: int) -> str | None:
        return None  # only online devices are picked

    def settle_training(self, server_round: int, deliveries: Sequence[TrainingDelivery]) -> list[str | None]:
        for job in deliveries:
            profile, totals = self._profile(job.node_id), self.totals[job.node_id]
            seconds = profile.round_seconds(job.downlink_bytes, job.samples, job.uplink_bytes)
            energy = profile.energy_joules(job.downlink_bytes, job.samples, job.uplink_bytes)
            self._priced[server_round] = seconds
            totals.sim_busy_s += seconds
            totals.energy_j += energy
            totals.train_samples += job.samples
            self.energy_j += energy
        return [None] * len(deliveries)

    def round_costs(self, server_round: int) -> RoundCosts:
        return RoundCosts(self._priced.get(server_round, 0.0), 0.0, 0, 0)
