"""Bytes on the wire per round and per node, as the grid serialised them (never estimates)."""

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


@dataclass
class NodeTraffic(RoundTraffic):
    """Traffic of one node over the whole run, plus the training seconds it reported."""

    compute_s: float = 0.0  # sum of the device-reported ``compute_s`` Update metric


class TrafficLog:
    """Per-round and per-node byte and reply counts, filled by a Grid as it sends and receives."""

    def __init__(self) -> None:
        self._rounds: dict[int, RoundTraffic] = defaultdict(RoundTraffic)
        self._nodes: dict[int, NodeTraffic] = defaultdict(NodeTraffic)

    def sent(self, server_round: int, nbytes: int, node_id: int | None = None) -> None:
        for entry in self._entries(server_round, node_id):
            entry.downlink_bytes += nbytes
            entry.tasks += 1

    def received(
        self, server_round: int, nbytes: int, ok: bool, node_id: int | None = None, compute_s: float = 0.0
    ) -> None:
        for entry in self._entries(server_round, node_id):
            entry.uplink_bytes += nbytes
            if ok:
                entry.replies += 1
            else:
                entry.failures += 1
        if node_id is not None:
            self._nodes[node_id].compute_s += compute_s

    def _entries(self, server_round: int, node_id: int | None) -> list[RoundTraffic]:
        entries = [self._rounds[server_round]]
        if node_id is not None:
            entries.append(self._nodes[node_id])
        return entries

    def nodes(self) -> dict[int, NodeTraffic]:
        """Whole-run traffic of every node that was sent a task, by node id."""
        return dict(sorted(self._nodes.items()))

    def round(self, server_round: int) -> RoundTraffic:
        """Traffic of a round so far (zeros if nothing was sent)."""
        return self._rounds.get(server_round, RoundTraffic())
