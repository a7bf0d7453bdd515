"""Bytes on the wire per round, as the grid serialised them (never estimates)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass
class RoundTraffic:
    """Traffic of one server round; byte counts are serialised sizes."""

    downlink_bytes: int = 0  # Task protos sent to devices
    uplink_bytes: int = 0  # Update protos received from devices
    tasks: int = 0
    replies: int = 0  # Updates without an error
    failures: int = 0  # error Updates and lost devices


class TrafficLog:
    """Per-round byte and reply counts, filled by a Grid as it sends and receives."""

    def __init__(self) -> None:
        self._rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)

    def sent(self, server_round: int, nbytes: int) -> None:
        entry = self._rounds[server_round]
        entry.downlink_bytes += nbytes
        entry.tasks += 1

    def received(self, server_round: int, nbytes: int, ok: bool) -> None:
        entry = self._rounds[server_round]
        entry.uplink_bytes += nbytes
        if ok:
            entry.replies += 1
        else:
            entry.failures += 1

    def round(self, server_round: int) -> RoundTraffic:
        """Traffic of a round so far (zeros if nothing was sent)."""
        return self._rounds.get(server_round, RoundTraffic())
