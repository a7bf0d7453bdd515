"""A device profile: how fast, how connected, how thrifty and how often online a device is.

The numbers a simulation needs to turn what a device really did in a round (bytes it
received and sent, as serialised on the wire, and training samples it processed) into
simulated seconds and joules:

- ``seconds = downlink_bytes * 8 / (downlink_mbps * 1e6) + samples / samples_per_s
  + uplink_bytes * 8 / (uplink_mbps * 1e6)``
- ``joules = samples * joules_per_sample + downlink_bytes * joules_per_byte_down
  + uplink_bytes * joules_per_byte_up``

A linear cost model on purpose (compute time per sample plus bytes over bandwidth, as
FL system simulators such as FedScale model a client's round): it needs only the
counts fedge measures, and it is exact to check. Availability is a
probability per round, optionally within daily ``online_hours``. ``memory_mb`` is the
device's training-memory budget (:mod:`fedge.client.budget`).

flwr-free: a device can carry its own profile. The profiles shipped with fedge are in
``conf/device/profile/`` (numbers and their sources are documented there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BITS_PER_BYTE = 8
MBIT = 1e6  # bits per second in one Mbit/s


@dataclass
class DeviceProfile:
    """One kind of device. Units are in the field names (samples/s, Mbit/s, J, MB, hours)."""

    name: str = "device"
    samples_per_s: float = 1000.0  # training throughput (forward + backward + step) on the task's model
    downlink_mbps: float = 10.0  # server -> device, Mbit/s (1e6 bit/s)
    uplink_mbps: float = 5.0  # device -> server, Mbit/s
    joules_per_sample: float = 0.0  # energy of training on one example
    joules_per_byte_down: float = 0.0  # radio energy per byte received
    joules_per_byte_up: float = 0.0  # radio energy per byte sent
    availability: float = 1.0  # probability of being online in a round (within online_hours)
    online_hours: list[int] = field(default_factory=list)  # hours of the day (0-23) it can be online; [] = all
    memory_mb: float = 0.0  # training-memory budget (client.memory_mb); 0 = no limit

    def __post_init__(self) -> None:
        self.online_hours = [int(h) for h in self.online_hours]
        problems = [
            f"{key} must be > 0, got {getattr(self, key)}"
            for key in ("samples_per_s", "downlink_mbps", "uplink_mbps")
            if not getattr(self, key) > 0
        ]
        problems += [
            f"{key} must be >= 0, got {getattr(self, key)}"
            for key in ("joules_per_sample", "joules_per_byte_down", "joules_per_byte_up", "memory_mb")
            if not getattr(self, key) >= 0
        ]
        if not 0 <= self.availability <= 1:
            problems.append(f"availability must be a probability in [0, 1], got {self.availability}")
        bad_hours = [h for h in self.online_hours if not 0 <= h <= 23]
        if bad_hours:
            problems.append(f"online_hours must be hours 0-23, got {bad_hours}")
        if problems:
            raise ValueError(f"device profile {self.name!r}: " + "; ".join(problems))

    def round_seconds(self, downlink_bytes: int, samples: int, uplink_bytes: int) -> float:
        """Simulated seconds to receive, train on ``samples`` examples and send."""
        return (
            downlink_bytes * BITS_PER_BYTE / (self.downlink_mbps * MBIT)
            + samples / self.samples_per_s
            + uplink_bytes * BITS_PER_BYTE / (self.uplink_mbps * MBIT)
        )

    def energy_joules(self, downlink_bytes: int, samples: int, uplink_bytes: int) -> float:
        """Joules spent receiving, training on ``samples`` examples and sending."""
        return (
            samples * self.joules_per_sample
            + downlink_bytes * self.joules_per_byte_down
            + uplink_bytes * self.joules_per_byte_up
        )

    def online_at(self, hour: int) -> bool:
        """Can the device be online at this hour of the day (0-23)?"""
        return not self.online_hours or hour % 24 in self.online_hours
