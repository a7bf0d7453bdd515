"""Device traces: per-device speed, bandwidth and online intervals from a CSV file.

A trace replaces the synthetic profiles (``device.trace=path/to/trace.csv``): each
client gets the speed and links of its row and is online only within its intervals:
in ``mode=async`` a task still running when its interval ends is lost (unfinished
work, counted as ``lost``); in synchronous rounds a device is sampled-and-reachable
iff the round starts inside one of its intervals. The format, one device per row::

    # fedge device trace v1; lines starting with '#' are comments
    client,profile,samples_per_s,downlink_mbps,uplink_mbps,online
    0,wearable,312.5,0.5,0.25,0-3600 5400-9000
    1,phone,2100,20,5,

- ``client``: the client index, 0 .. num_clients-1 (partition order); every client
  needs exactly one row.
- ``profile``: a free label (reports group devices by it).
- ``samples_per_s``: training throughput on the task's model (forward + backward +
  step), > 0. ``downlink_mbps`` / ``uplink_mbps``: link rates in Mbit/s, > 0.
- ``online``: space-separated ``start-end`` intervals in simulated seconds since the run
  started, increasing and not overlapping; empty = always online.
- optional columns: ``joules_per_sample``, ``joules_per_byte_down``,
  ``joules_per_byte_up``, ``memory_mb`` (>= 0; default 0).

Converting public traces. FedScale's device traces (Lai et al., "FedScale", ICML 2022;
``client_device_capacity``: per client a compute speed in ms per sample and a
communication rate in kbit/s; ``client_behave_trace``: per client lists of ``active``
and ``inactive`` timestamps in seconds) map row by row: ``samples_per_s = 1000 /
ms_per_sample`` scaled by the ratio of your model's FLOPs to the trace's model,
``downlink_mbps = uplink_mbps = kbps / 1000`` (or split as measured), and ``online`` the
pairs ``active[i]-inactive[i]``. Any trace that gives a device's throughput, link rates
and on/off times converts the same way; write the CSV with the header above.

A malformed trace is refused with the file, the line and the field named
(:class:`TraceError`). Written here (on :mod:`csv`) because the format is fedge's own.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedge.simulations.devices.profile import DeviceProfile

REQUIRED = ("client", "profile", "samples_per_s", "downlink_mbps", "uplink_mbps", "online")
OPTIONAL = ("joules_per_sample", "joules_per_byte_down", "joules_per_byte_up", "memory_mb")
POSITIVE = ("samples_per_s", "downlink_mbps", "uplink_mbps")


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class TracedDevice:
    """One client's row: its profile (speed, links, energy) and online intervals."""

    profile: DeviceProfile
    online: tuple[tuple[float, float], ...]  # (start_s, end_s) intervals; () = always online

    def online_at(self, t: float) -> bool:
        return not self.online or any(start <= t < end for start, end in self.online)

    def next_online(self, t: float) -> float | None:
        """The earliest time >= ``t`` at which the device is online (None: never again)."""
        if self.online_at(t):
            return t
        starts = [start for start, _ in self.online if start > t]
        return min(starts) if starts else None

    def offline_after(self, t: float) -> float:
        """When the interval the device is online in at ``t`` ends (inf: never)."""
        for start, end in self.online:
            if start <= t < end:
                return end
        return math.inf


def load_trace(path: str | Path, num_clients: int) -> dict[int, TracedDevice]:
    """Client index -> its traced device; raises :class:`TraceError` naming file, line, field."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc}") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise TraceError(f"{path}: the trace has no header and no rows")
    header_line, header_text = lines[0]
    header = [name.strip() for name in next(csv.reader([header_text]))]
    missing = [name for name in REQUIRED if name not in header]
    unknown = [name for name in header if name not in REQUIRED + OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        problem = f"missing {missing}" if missing else f"unknown {unknown}" if unknown else "repeated names"
        raise TraceError(f"{path}:{header_line}: header: {problem}; the columns are {list(REQUIRED)} + optional {list(OPTIONAL)}")
    devices: dict[int, TracedDevice] = {}
    for number, line in lines[1:]:
        cells = [cell.strip() for cell in next(csv.reader([line]))]
        if len(cells) != len(header):
            raise TraceError(f"{path}:{number}: row has {len(cells)} fields, the header {len(header)}")
        row = dict(zip(header, cells))
        client = _client(path, number, row["client"], num_clients)
        if client in devices:
            raise TraceError(f"{path}:{number}: field 'client': client {client} has a row already")
        devices[client] = _device(path, number, row)
    absent = [c for c in range(num_clients) if c not in devices]
    if absent:
        raise TraceError(f"{path}: no row for client(s) {absent[:10]} (num_clients={num_clients}; every client needs one)")
    return devices


def _client(path: Path, number: int, text: str, num_clients: int) -> int:
    try:
        client = int(text)
    except ValueError:
        raise TraceError(f"{path}:{number}: field 'client': {text!r} is not an integer") from None
    if not 0 <= client < num_clients:
        raise TraceError(f"{path}:{number}: field 'client': {client} is not in [0, {num_clients - 1}] (num_clients={num_clients})")
    return client


def _device(path: Path, number: int, row: dict[str, str]) -> TracedDevice:
    values: dict[str, float] = {}
    for name in POSITIVE + tuple(n for n in OPTIONAL if n in row):
        text = row[name]
        try:
            value = float(text) if text or name in POSITIVE else 0.0
        except ValueError:
            raise TraceError(f"{path}:{number}: field {name!r}: {text!r} is not a number") from None
        bad = not math.isfinite(value) or (value <= 0 if name in POSITIVE else value < 0)
        if bad:
            raise TraceError(f"{path}:{number}: field {name!r}: {text!r} must be {'> 0' if name in POSITIVE else '>= 0'}")
        values[name] = value
    label = row["profile"] or "trace"
    profile = DeviceProfile(
        name=label, availability=1.0, samples_per_s=values["samples_per_s"], downlink_mbps=values["downlink_mbps"],
        uplink_mbps=values["uplink_mbps"], joules_per_sample=values.get("joules_per_sample", 0.0),
        joules_per_byte_down=values.get("joules_per_byte_down", 0.0), joules_per_byte_up=values.get("joules_per_byte_up", 0.0),
        memory_mb=values.get("memory_mb", 0.0),
    )
    return TracedDevice(profile, _intervals(path, number, row["online"]))


def _intervals(path: Path, number: int, text: str) -> tuple[tuple[float, float], ...]:
    intervals: list[tuple[float, float]] = []
    for item in text.split():
        start_text, sep, end_text = item.partition("-")
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            start = end = math.nan
        if not sep or not (math.isfinite(start) and math.isfinite(end)) or not 0 <= start < end:
            raise TraceError(f"{path}:{number}: field 'online': {item!r} is not an interval START-END with 0 <= START < END seconds")
        if intervals and start < intervals[-1][1]:
            raise TraceError(f"{path}:{number}: field 'online': {item!r} starts before the previous interval ends (intervals must increase and not overlap)")
        intervals.append((start, end))
    return tuple(intervals)


def trace_devices(path: str | Path, node_ids: Sequence[int]) -> dict[int, TracedDevice]:
    """Node id -> traced device: the ``i``-th smallest node id takes client ``i``'s row."""
    rows = load_trace(path, len(node_ids))
    return {node: rows[i] for i, node in enumerate(sorted(node_ids))}
