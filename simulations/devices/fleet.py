"""From the ``device`` config group to per-client profiles and a DeviceSimulator.

A mix's shares become exact client counts (largest remainder: 60/30/10 of 10 clients
is 6/3/1, not a random draw that could give 8/2/0); the counts are then dealt to the
clients in an order shuffled with the run's seed, so the assignment is reproducible
and does not follow partition order (which may correlate with data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedge.simulations.devices.profile import DeviceProfile
from fedge.simulations.devices.simulator import DeviceSimulator
from fedge.simulations.devices.speed import spread_speeds
from fedge.simulations.devices.trace import TracedDevice, trace_devices

#: Separates the profile-assignment random stream from every other seeded stream.
ASSIGNMENT_STREAM = 0xDE71CE
SHARE_TOLERANCE = 1e-6


def profile_counts(mix: Mapping[str, float], num_clients: int) -> dict[str, int]:
    """Clients per profile for ``mix`` (shares summing to 1), by largest remainder."""
    exact = {name: share * num_clients for name, share in mix.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    left = num_clients - sum(counts.values())
    by_remainder = sorted(mix, key=lambda name: (-(exact[name] - counts[name]), list(mix).index(name)))
    for name in by_remainder[:left]:
        counts[name] += 1
    return counts


def assign_profiles(
    profiles: Mapping[str, DeviceProfile], mix: Mapping[str, float], node_ids: Sequence[int], seed: int
) -> dict[int, DeviceProfile]:
    """Node id -> profile: exact counts from ``mix``, dealt in a seeded shuffled order."""
    check_mix(profiles, mix)
    names = [name for name, count in profile_counts(mix, len(node_ids)).items() for _ in range(count)]
    order = np.random.default_rng([seed, ASSIGNMENT_STREAM]).permutation(len(names))
    return {node: profiles[names[k]] for node, k in zip(sorted(node_ids), order)}


def check_mix(profiles: Mapping[str, DeviceProfile], mix: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming an unknown profile or a share that cannot work."""
    unknown = sorted(set(mix) - set(profiles))
    if unknown:
        raise ValueError(f"device.mix names unknown profile(s) {unknown}; profiles are {sorted(profiles)}")
    bad = {name: share for name, share in mix.items() if not 0 <= share <= 1}
    if bad:
        raise ValueError(f"device.mix shares must be in [0, 1], got {bad}")
    total = sum(mix.values())
    if abs(total - 1) > SHARE_TOLERANCE:
        raise ValueError(f"device.mix shares must sum to 1, got {total:g} ({dict(mix)})")


def build_profiles(profiles_cfg: Mapping[str, Any]) -> dict[str, DeviceProfile]:
    """Typed, checked profiles from ``device.profiles`` (errors name the profile and key)."""
    out = {}
    for name, node in profiles_cfg.items():
        values: dict[str, Any] = dict(OmegaConf.to_container(node) if isinstance(node, DictConfig) else node)  # type: ignore[arg-type]
        known = {f.name for f in fields(DeviceProfile)}
        extra = sorted(set(values) - known)
        if extra:
            raise ValueError(f"device.profiles.{name}: unknown key(s) {extra}")
        values["name"] = name
        try:
            out[name] = DeviceProfile(**values)
        except ValueError as exc:
            raise ValueError(f"device.profiles.{name}: {exc}") from None
    return out


def fleet_profiles(device_cfg: Any, node_ids: Sequence[int], seed: int) -> dict[int, DeviceProfile]:
    """Per-node profiles the ``device`` config describes (a trace's rows with
    ``device.trace``, each spread by ``device.speed_sigma`` otherwise); empty for ``device=none``."""
    return {node: d.profile if isinstance(d, TracedDevice) else d for node, d in fleet_devices(device_cfg, node_ids, seed).items()}


def fleet_devices(device_cfg: Any, node_ids: Sequence[int], seed: int) -> dict[int, DeviceProfile | TracedDevice]:
    """Per node its traced device (``device.trace``: speed, links, online intervals) or its
    speed-spread profile (``device.mix``, ``device.speed_sigma``); empty for ``device=none``."""
    trace = str(device_cfg.get("trace") or "")
    if trace:
        return dict(trace_devices(trace, node_ids))
    if not device_cfg.mix:
        return {}
    mix = {str(k): float(v) for k, v in device_cfg.mix.items()}
    profiles = assign_profiles(build_profiles(device_cfg.profiles), mix, node_ids, seed)
    return dict(spread_speeds(profiles, float(device_cfg.get("speed_sigma", 0.0)), seed))


def device_simulator(
    cfg: Any, profiles: Mapping[int, DeviceProfile], traced: Mapping[int, TracedDevice] | None = None
) -> DeviceSimulator | None:
    """The simulator for a run (``None`` without profiles); needs ``cfg.server.round_deadline_s``;
    ``traced`` nodes are online per their trace's intervals."""
    deadline = float(cfg.server.round_deadline_s)
    if deadline < 0:
        raise ValueError(f"server.round_deadline_s must be >= 0 (0 = no deadline), got {deadline}")
    if not profiles:
        if deadline > 0:
            raise ValueError(
                f"server.round_deadline_s={deadline:g} is simulated time and needs device profiles "
                "(e.g. device=mix_wearable_phone_gateway); device=none simulates none"
            )
        return None
    try:
        return DeviceSimulator(
            profiles,
            seed=int(cfg.seed),
            deadline_s=deadline,
            start_hour=float(cfg.device.start_hour),
            round_interval_s=float(cfg.device.round_interval_s),
            traced=traced,
        )
    except ValueError as exc:
        raise ValueError(f"device: {exc}") from None
