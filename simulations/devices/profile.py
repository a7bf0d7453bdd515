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
device's training-memory budget (:mod:`fedge.client.budget`). ``flash_kb``,
``train_ram_kb``, ``latency_ms`` and ``int8_macs_per_s`` are the deployment budget the
hardware-aware search (``fedge-search``, :mod:`fedge.search`) holds a model to; 0 = none.

The fields (and their units) are the ``device.profiles.*`` schema,
:class:`fedge.conf.schema.DeviceProfileConfig`; this class adds their checks and the
pricing. The profiles shipped with fedge are in ``conf/device/profile/`` (numbers and
their sources are documented there).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.conf.schema import DeviceProfileConfig

BITS_PER_BYTE = 8
MBIT = 1e6  # bits per second in one Mbit/s


@dataclass
class DeviceProfile(DeviceProfileConfig):
    """One kind of device, checked, with its prices. Units are in the field names
    (samples/s, Mbit/s, J, MB, hours)."""

    def __post_init__(self) -> None:
        self.online_hours = [int(h) for h in self.online_hours]
        problems = [
            f"{key} must be > 0, got {getattr(self, key)}"
            for key in ("samples_per_s", "downlink_mbps", "uplink_mbps")
            if not getattr(self, key) > 0
        ]
        problems += [
            f"{key} must be >= 0, got {getattr(self, key)}"
            for key in ("joules_per_sample", "joules_per_byte_down", "joules_per_byte_up", "memory_mb",
                        "flash_kb", "train_ram_kb", "latency_ms", "int8_macs_per_s")
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
