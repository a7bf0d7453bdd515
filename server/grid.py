"""FedgeGrid: the part of a ``flwr.serverapp.Grid`` that every fedge backend shares.

A backend subclass only implements :meth:`FedgeGrid._deliver`: take serialised Task
protos for some nodes and return serialised Update protos (or ``None`` for a node that
never answered). Message bookkeeping, Task/Update translation and byte accounting
live here, so the in-process, gRPC and Ray backends count the same bytes.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from uuid import uuid4

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedge.protos.v1 import task_pb2
from fedge.server.identity import DEFAULT_RUN_ID, ensure_task_identity
from fedge.server.traffic import TrafficLog
from fedge.server.wire import failure_reply, message_to_task, update_to_reply

log = logging.getLogger(__name__)


class FedgeGrid(Grid):
    """A Grid whose nodes are fedge devices reached through :meth:`_deliver`."""

    def __init__(self, node_ids: Sequence[int], run_id: int = DEFAULT_RUN_ID) -> None:
        if len(set(node_ids)) != len(node_ids):
            raise ValueError("node ids must be unique")
        self._node_ids = sorted(int(n) for n in node_ids)
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.traffic = TrafficLog()
        ensure_task_identity(run_id)

    # -- flwr.serverapp.Grid ------------------------------------------------------
    def set_run(self, run: Run) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        self._run = run
        ensure_task_identity(run.run_id)

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its node now; replies wait for :meth:`pull_messages`."""
        batch: list[tuple[Message, int, bytes]] = []
        for message in messages:
            if not self._is_known(message.metadata.dst_node_id):
                raise ValueError(f"message for unknown node {message.metadata.dst_node_id}")
            message.metadata.__dict__["_message_id"] = uuid4().hex
            task = message_to_task(message)
            payload = task.SerializeToString()
            self.traffic.sent(task.server_round, len(payload), message.metadata.dst_node_id)
            batch.append((message, task.server_round, payload))
        answers = self._deliver([(m.metadata.dst_node_id, p) for m, _, p in batch])
        for (message, server_round, _), answer in zip(batch, answers, strict=True):
            self._replies[message.metadata.message_id] = self._to_reply(message, server_round, answer)
        return [m.metadata.message_id for m, _, _ in batch]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies for the given ids that have arrived (each is handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push, then pull the replies in push order (deterministic aggregation order)."""
        return self.pull_messages(self.push_messages(messages))

    # -- backend hooks ------------------------------------------------------------
    def _is_known(self, node_id: int) -> bool:
        """May a message be addressed to ``node_id``? (Grids with dynamic nodes override.)"""
        return node_id in self._node_ids

    @abstractmethod
    def _deliver(self, tasks: Sequence[tuple[int, bytes]]) -> list[bytes | None]:
        """Send each ``(node_id, Task bytes)``; return Update bytes per task, in order.

        ``None`` means the node never answered (lost, timed out).
        """

    def close(self) -> None:
        """Release backend resources (worker processes, channels)."""

    def __enter__(self) -> FedgeGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _to_reply(self, message: Message, group: int, answer: bytes | None) -> Message:
        node = message.metadata.dst_node_id
        if answer is None:
            self.traffic.received(group, 0, ok=False, node_id=node)
            return failure_reply(message, f"node {node} did not answer")
        update = task_pb2.Update()
        try:
            update.ParseFromString(answer)
        except Exception as exc:  # a broken device must not break the round
            self.traffic.received(group, len(answer), ok=False, node_id=node)
            return failure_reply(message, f"node {node} sent unparsable bytes: {exc}")
        compute_s = update.metrics.get("compute_s", 0.0)
        self.traffic.received(group, len(answer), ok=not update.error, node_id=node, compute_s=compute_s)
        return update_to_reply(update, message)
