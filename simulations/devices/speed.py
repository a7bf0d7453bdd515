"""Speed spread within a device profile: no two watches train at the same speed.

Each device's ``samples_per_s`` is its profile's times a lognormal factor
``exp(sigma * z)``, ``z ~ N(0, 1)``, and its link rates (down and up together) its
profile's times another, independent one (signal quality differs from chip speed).
Both are drawn per device from ``(seed, SPEED_STREAM)`` in node order, so the profile's
numbers are the fleet's median device and the spread is reproducible. ``sigma`` (``device.speed_sigma``) = 0 keeps every device at its profile's
speed; 0.5 puts the middle 68% of devices within x0.6..x1.65 of it, which is about the
spread of one phone model's training throughput across thermal and background-load
states reported by on-device benchmarks; 1.0 gives a long tail of very slow devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from fedge.simulations.devices.profile import DeviceProfile

#: Separates the speed-spread random stream from every other seeded stream.
SPEED_STREAM = 0x5BEED


def spread_speeds(profiles: Mapping[int, DeviceProfile], sigma: float, seed: int) -> dict[int, DeviceProfile]:
    """Per node its profile with ``samples_per_s`` and the link rates scaled by lognormal factors."""
    if not sigma >= 0:
        raise ValueError(f"device.speed_sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return dict(profiles)
    nodes = sorted(profiles)
    factors = np.exp(sigma * np.random.default_rng([seed, SPEED_STREAM]).standard_normal((len(nodes), 2)))
    return {
        node: replace(
            profiles[node],
            samples_per_s=profiles[node].samples_per_s * float(compute),
            downlink_mbps=profiles[node].downlink_mbps * float(link),
            uplink_mbps=profiles[node].uplink_mbps * float(link),
        )
        for node, (compute, link) in zip(nodes, factors)
    }
