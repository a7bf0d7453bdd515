"""The devices a gRPC server knows: who joined, with what, and who is still alive.

A device is alive while it has been heard from (Join, PullTask, PushUpdate,
Heartbeat) within ``liveness_s`` seconds, or holds a long poll open, and has not left.

One session per device: the connection (gRPC peer address) that joined holds the
device's identity until it leaves or falls silent past ``liveness_s``. A second
connection presenting the same identity meanwhile is refused
(:class:`SessionTaken`), so a copied certificate cannot push the real device out. Node ids are derived from
the device id, so a device keeps its node id across reconnects and server restarts:
a decimal device id (``"1007"``) is its own node id, any other name maps to a stable
63-bit hash of it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

#: Node ids below this are reserved (Flower uses 0 and 1 for its own parties).
MIN_NODE_ID = 2
_MAX_NODE_ID = 2**63 - 1


def node_id_for(device_id: str) -> int:
    """The node id of a device: its id if decimal (and >= 2), else a stable hash."""
    if device_id.isdigit() and MIN_NODE_ID <= int(device_id) <= _MAX_NODE_ID:
        return int(device_id)
    digest = hashlib.sha256(device_id.encode()).digest()
    return MIN_NODE_ID + int.from_bytes(digest[:8], "big") % (_MAX_NODE_ID - MIN_NODE_ID)


@dataclass
class Node:
    """One device as the server sees it."""

    device_id: str
    node_id: int
    profile: dict[str, float] = field(default_factory=dict)
    codecs: list[str] = field(default_factory=list)
    last_seen: float = 0.0  # monotonic seconds
    left: bool = False
    joins: int = 0  # how often it joined (1 + reconnects)
    session: str = ""  # gRPC peer (connection) that holds the device's identity
    open_polls: int = 0  # long polls held open right now (each proves the device is there)


class SessionTaken(ValueError):
    """Another live connection holds this device's identity."""


class NodeRegistry:
    """Thread-safe table of joined devices with liveness.

    Parameters
    ----------
    liveness_s:
        A device not heard from for this many seconds counts as gone.
    clock:
        Monotonic time source (seconds), replaceable in tests.
    """

    def __init__(self, liveness_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if liveness_s <= 0:
            raise ValueError(f"liveness_s must be > 0, got {liveness_s}")
        self.liveness_s = liveness_s
        self._clock = clock
        self._nodes: dict[str, Node] = {}
        self._by_node_id: dict[int, Node] = {}
        self._changed = threading.Condition()

    def join(
        self, device_id: str, profile: Mapping[str, float], codecs: Sequence[str], session: str = ""
    ) -> Node:
        """Register a device (again) for the connection ``session``; returns its record.

        Raises :class:`SessionTaken` while another connection holds the device alive.
        """
        node_id = node_id_for(device_id)
        with self._changed:
            other = self._by_node_id.get(node_id)
            if other is not None and other.device_id != device_id:
                raise ValueError(f"device {device_id!r} maps to node id {node_id}, taken by {other.device_id!r}")
            node = self._nodes.get(device_id) or Node(device_id, node_id)
            if node.session and node.session != session and self._alive(node):
                raise SessionTaken(
                    f"device {device_id!r} is connected from another session; it is released when that one "
                    f"leaves or is silent for {self.liveness_s:g} s"
                )
            node.profile, node.codecs = dict(profile), list(codecs)
            node.last_seen, node.left = self._clock(), False
            node.joins += 1
            node.session = session
            self._nodes[device_id] = node
            self._by_node_id[node_id] = node
            self._changed.notify_all()
            return node

    def touch(self, device_id: str, session: str | None = None) -> Node | None:
        """Note that a device was heard from; ``None`` if it has not joined (or left).

        With ``session``: raises :class:`SessionTaken` when another connection holds it.
        """
        with self._changed:
            node = self._nodes.get(device_id)
            if node is None or node.left:
                return None
            if session is not None and node.session != session:
                raise SessionTaken(f"device {device_id!r} joined from another connection: join again")
            node.last_seen = self._clock()
            return node

    def polling(self, device_id: str, delta: int) -> None:
        """A long poll of the device opened (+1) or closed (-1); either counts as being heard from."""
        with self._changed:
            node = self._nodes.get(device_id)
            if node is not None:
                node.open_polls = max(0, node.open_polls + delta)
                node.last_seen = self._clock()

    def leave(self, device_id: str, session: str | None = None) -> bool:
        """The device said goodbye: it is no longer alive. False (nothing changes) when
        ``session`` is given and another live connection holds the device."""
        with self._changed:
            node = self._nodes.get(device_id)
            if node is None:
                return True
            if session is not None and node.session != session and self._alive(node):
                return False
            node.left = True
            node.session = ""
            self._changed.notify_all()
            return True

    def knows(self, node_id: int) -> bool:
        """Has this node ever joined?"""
        with self._changed:
            return node_id in self._by_node_id

    def is_alive(self, node_id: int) -> bool:
        with self._changed:
            node = self._by_node_id.get(node_id)
            return node is not None and self._alive(node)

    def live_node_ids(self) -> list[int]:
        """Node ids of the devices alive now, sorted."""
        with self._changed:
            return sorted(n.node_id for n in self._nodes.values() if self._alive(n))

    def node(self, node_id: int) -> Node | None:
        with self._changed:
            return self._by_node_id.get(node_id)

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` devices are alive or ``timeout_s`` passes; True if they are."""
        deadline = self._clock() + timeout_s
        with self._changed:
            while sum(self._alive(n) for n in self._nodes.values()) < count:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
            return True

    def _alive(self, node: Node) -> bool:
        return not node.left and (node.open_polls > 0 or self._clock() - node.last_seen <= self.liveness_s)
