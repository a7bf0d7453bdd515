"""GrpcGrid: a Flower Grid over real devices connected to a :class:`FederationServer`.

Any Flower strategy (wrapped by CompressedStrategy) drives the devices through it.
A round's tasks are posted to the server's task board, signed, each with the largest
answer it accepts (:mod:`fedge.server.push_limits`); devices pull them, train and push
their updates. The round ends when every sampled device answered, when the devices
still owing an answer are all gone (silent past the liveness limit, or left), once
``server.min_reply_fraction`` answered plus a grace period (the rest get
``max(server.reply_grace_s, time the quorum took)`` more, so a device that heartbeats
but never answers cannot hold the round), or at the round's deadline
(``server.round_timeout_s``), whichever comes first.

The Grid runs in the strategy's (main) thread; the gRPC server runs on its own event
loop. They meet only in the thread-safe task board and registry: ``post`` wakes the
waiting long polls on the loop, ``wait`` blocks this thread on a condition. A device that
never answered is a failure for the strategy (``None`` to FedgeGrid). When fewer
than ``server.min_reply_fraction`` of the sampled devices answered, the round is
abandoned: every reply becomes a failure naming the reason, so the global model
does not move on too little evidence.

Bytes are counted twice: FedgeGrid counts serialised Task/Update protos (the same
numbers as every backend); :attr:`GrpcGrid.wire` counts gRPC message bytes of the
chunked transfers, prefix included.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fedge.protos.v1 import task_pb2
from fedge.server.grid import FedgeGrid
from fedge.server.identity import DEFAULT_RUN_ID
from fedge.server.taskboard import Outgoing
from fedge.server.transport import FederationServer

log = logging.getLogger(__name__)


@dataclass
class WireTraffic:
    """gRPC message bytes of one round (chunk messages + 5-byte prefixes)."""

    uplink_grpc_bytes: int = 0  # accepted PushUpdate streams
    downlink_grpc_bytes: int = 0  # PullTask streams sent (re-sends after a reconnect included)


class GrpcGrid(FedgeGrid):
    """Flower Grid whose nodes are the devices joined to ``server``."""

    def __init__(self, server: FederationServer, run_id: int = DEFAULT_RUN_ID) -> None:
        super().__init__([], run_id)
        self.server = server
        self.settings = server.settings
        self.wire: dict[int, WireTraffic] = defaultdict(WireTraffic)
        self.abandoned_rounds: list[int] = []

    def get_node_ids(self) -> list[int]:
        return self.server.registry.live_node_ids()

    def _is_known(self, node_id: int) -> bool:
        return self.server.registry.knows(node_id)

    def wait_for_nodes(self, count: int, timeout_s: float | None = None) -> None:
        """Block until ``count`` devices are alive; ``TimeoutError`` says how many came."""
        timeout_s = self.settings.join_timeout_s if timeout_s is None else timeout_s
        if not self.server.registry.wait_for(count, timeout_s):
            alive = len(self.get_node_ids())
            raise TimeoutError(f"only {alive} of {count} devices joined within {timeout_s:.0f} s")

    def _deliver(self, tasks: Sequence[tuple[int, bytes]]) -> list[bytes | None]:
        if not tasks:
            return []
        outgoing: list[Outgoing] = []
        for node_id, payload in tasks:
            task = task_pb2.Task.FromString(payload)
            ceiling = self.server.update_ceiling(task)
            outgoing.append(self.server.outgoing(node_id, task.server_round, task.task_id, payload, ceiling))
        server_round = outgoing[0].server_round
        board, registry = self.server.board, self.server.registry
        needed = math.ceil(self.settings.min_reply_fraction * len(outgoing))
        board.post(outgoing)
        deadline = time.monotonic() + self.settings.round_timeout_s
        board.wait(
            outgoing, deadline, given_up=lambda t: not registry.is_alive(t.node_id),
            quorum=max(needed, 1), grace_s=self.settings.reply_grace_s,
        )
        board.withdraw(outgoing)
        for task in outgoing:
            wire = self.wire[task.server_round]
            wire.uplink_grpc_bytes += task.uplink_wire_bytes
            wire.downlink_grpc_bytes += task.downlink_wire_bytes
        answered = [t for t in outgoing if t.answer is not None]
        missing = [t.node_id for t in outgoing if t.answer is None]
        if missing:
            log.warning("round %d: no answer from nodes %s", server_round, missing)
        if len(answered) < needed:
            reason = (
                f"round {server_round} abandoned: {len(answered)} of {len(outgoing)} devices answered "
                f"by the deadline, {needed} needed (server.min_reply_fraction={self.settings.min_reply_fraction})"
            )
            log.error(reason)
            self.abandoned_rounds.append(server_round)
            return [_error_update(t, reason) if t.answer is not None else None for t in outgoing]
        return [t.answer for t in outgoing]

    def transport_report(self) -> dict:
        """gRPC-level bytes per round and abandoned rounds, for results.json."""
        return {
            "transport": {
                "kind": "grpc",
                "tls": self.server.secure,
                "chunk_bytes": self.settings.chunk_bytes,
                "rounds": [{"round": r, **asdict(w)} for r, w in sorted(self.wire.items())],
                "abandoned_rounds": list(self.abandoned_rounds),
            }
        }

    def close(self) -> None:
        self.server.board.finish()


def _error_update(task: Outgoing, reason: str) -> bytes:
    return task_pb2.Update(task_id=task.task_id, node_id=task.node_id, error=reason).SerializeToString()
