"""AsyncGrpcGrid: devices over gRPC without rounds, for buffered asynchronous aggregation.

:class:`~fedge.server.grpc_grid.GrpcGrid` delivers a round and waits for all its
replies. An asynchronous driver (FedBuff) needs the opposite shape: give one free
device the newest model the moment it is free, and take each update as it arrives.
This grid adds that, over the same task board, registry and byte accounting:

* :meth:`AsyncGrpcGrid.submit` posts one instruction for one device and returns at
  once (its message id); the device pulls it with its next long poll;
* :meth:`AsyncGrpcGrid.next_completion` blocks up to a timeout for the next reply, in
  the order the pushes reached the server (the board numbers accepted answers); a
  device that goes silent past the liveness limit, or whose task stays unanswered for
  ``server.round_timeout_s``, yields a failure reply naming why (its task withdrawn: a
  late push is refused as expired, with that reason in its PushReply);
* :meth:`AsyncGrpcGrid.idle_node_ids` names the live devices with no task open;
* :meth:`AsyncGrpcGrid.open_dispatches` / :meth:`AsyncGrpcGrid.repost` let a checkpoint
  keep the tasks in flight: after a crash the restarted server offers each device the
  same task (same id, same bytes, signed again), so an update computed while the server
  was down is pushed again and accepted instead of being lost.

Replies are translated exactly as in every fedge Grid (``FedgeGrid._parse`` and
``_to_reply``): per-version traffic counts, unparsable bytes become a failure reply.
What the update *contains* (codec, staleness, norms) is checked by the driver's
decoder and :mod:`fedge.strategies.reply_validation`, as for synchronous rounds.

Written by hand because Flower's Grid has no completion queue: its ``pull_messages``
polls message ids, which cannot say which of many devices answered first.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import uuid4

from flwr.app import Message, RecordDict

from fedge.protos.v1 import task_pb2
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.identity import DEFAULT_RUN_ID
from fedge.server.message_translation import failure_reply, message_to_task, with_message_id
from fedge.server.taskboard import Outgoing
from fedge.server.transport import FederationServer

log = logging.getLogger(__name__)


@dataclass
class Dispatch:
    """One instruction on its way to a device, with what its reply is built from."""

    message: Message  # the instruction, under its message id (= the Task's task id)
    version: int  # the Task's ``server_round`` (the driver's model version + 1)
    outgoing: Outgoing
    posted_at: float  # time.monotonic() when posted


@dataclass(frozen=True)
class OpenTask:
    """A task in flight, as a checkpoint keeps it (see :meth:`AsyncGrpcGrid.repost`)."""

    node_id: int
    task_id: str
    message_type: str  # e.g. "train"
    payload: bytes  # the serialised Task, exactly as first sent


class AsyncGrpcGrid(GrpcGrid):
    """A :class:`GrpcGrid` with a per-device, non-blocking submit and a completion queue."""

    def __init__(self, server: FederationServer, run_id: int = DEFAULT_RUN_ID) -> None:
        super().__init__(server, run_id)
        self._open: dict[str, Dispatch] = {}  # message id -> dispatch awaiting its reply
        self._ready: deque[Message] = deque()  # replies not handed out yet, arrival order
        self.completed = 0  # replies handed out (failures included)

    # -- submit ---------------------------------------------------------------------
    def submit(self, message: Message) -> str:
        """Offer ``message`` to its destination device now; returns its message id.

        ``ValueError`` for an unknown node or one that already has a task open (one
        task per device at a time: a device trains on one model version at once).
        """
        node = message.metadata.dst_node_id
        if not self._is_known(node):
            raise ValueError(f"message for unknown node {node}")
        if node in self.busy_node_ids():
            raise ValueError(f"node {node} already has a task open")
        message = with_message_id(message, uuid4().hex)
        task = message_to_task(message)
        payload = task.SerializeToString()
        self.traffic.sent(task.server_round, len(payload), node)
        self._post(message, task, payload)
        return message.metadata.message_id

    def _post(self, message: Message, task: task_pb2.Task, payload: bytes) -> None:
        ceiling = self.server.update_ceiling(task)
        outgoing = self.server.outgoing(task.node_id, task.server_round, task.task_id, payload, ceiling)
        self._open[task.task_id] = Dispatch(message, task.server_round, outgoing, time.monotonic())
        self.server.board.post([outgoing])

    def busy_node_ids(self) -> set[int]:
        """Devices with a task open (posted, not yet answered or given up on)."""
        return {d.message.metadata.dst_node_id for d in self._open.values()}

    def idle_node_ids(self) -> list[int]:
        """Live devices without a task open, in node-id order."""
        busy = self.busy_node_ids()
        return [n for n in self.get_node_ids() if n not in busy]

    # -- completions ----------------------------------------------------------------
    def next_completion(self, timeout_s: float) -> Message | None:
        """The next reply in arrival order, waiting up to ``timeout_s`` seconds (None: none came).

        A failure reply (``has_error()``) stands for a device that answered with an
        error, sent unparsable bytes, went silent, or ran past ``server.round_timeout_s``.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._collect()
            if self._ready:
                self.completed += 1
                return self._ready.popleft()
            if time.monotonic() >= deadline or not self._open:  # nothing open: nothing can arrive
                return None
            board = self.server.board
            board.wait_any([d.outgoing for d in self._open.values()], deadline, given_up=self._given_up)

    def _given_up(self, task: Outgoing) -> bool:
        dispatch = self._open.get(task.task_id)
        timed_out = dispatch is not None and time.monotonic() - dispatch.posted_at > self.settings.round_timeout_s
        return timed_out or self._gone(task.node_id)

    def _gone(self, node_id: int) -> bool:
        """Joined once and no longer alive (a task reposted after a restart waits for its device to join)."""
        registry = self.server.registry
        return registry.knows(node_id) and not registry.is_alive(node_id)

    def _collect(self) -> None:
        """Move answered and given-up dispatches to the ready queue (answers by arrival)."""
        answered = sorted((d for d in self._open.values() if d.outgoing.answer is not None), key=lambda d: d.outgoing.arrival)
        for dispatch in answered:
            self._close(dispatch)
            answer = dispatch.outgoing.answer
            self._ready.append(self._to_reply(dispatch.message, dispatch.version, answer, self._parse(answer)))
        lost = [d for d in self._open.values() if self._given_up(d.outgoing)]
        for dispatch in lost:
            self.server.board.withdraw([dispatch.outgoing])
            if dispatch.outgoing.answer is not None:  # answered between the two looks: keep it
                self._close(dispatch)
                answer = dispatch.outgoing.answer
                self._ready.append(self._to_reply(dispatch.message, dispatch.version, answer, self._parse(answer)))
                continue
            self._close(dispatch)
            node = dispatch.outgoing.node_id
            why = (
                f"node {node} went silent or left" if self._gone(node)
                else f"node {node} did not answer within server.round_timeout_s={self.settings.round_timeout_s:g} s"
            )
            log.warning("task %s (version %d): %s; withdrawn", dispatch.outgoing.task_id, dispatch.version, why)
            self.traffic.received(dispatch.version, 0, ok=False, node_id=node)
            self._ready.append(failure_reply(dispatch.message, why))

    def _close(self, dispatch: Dispatch) -> None:
        del self._open[dispatch.outgoing.task_id]
        wire = self.wire[dispatch.version]
        wire.uplink_grpc_bytes += dispatch.outgoing.uplink_wire_bytes
        wire.downlink_grpc_bytes += dispatch.outgoing.downlink_wire_bytes

    def open_message_ids(self) -> list[str]:
        """Message ids of the tasks open now."""
        return list(self._open)

    def cancel(self, message_ids: Iterable[str]) -> None:
        """Withdraw open tasks (no reply will be handed out for them; a late push is refused as expired)."""
        for message_id in message_ids:
            dispatch = self._open.get(message_id)
            if dispatch is not None:
                self.server.board.withdraw([dispatch.outgoing])
                self._close(dispatch)

    # -- checkpoint support ---------------------------------------------------------
    def open_dispatches(self) -> list[OpenTask]:
        """The tasks in flight, for a checkpoint (oldest first)."""
        return [
            OpenTask(d.outgoing.node_id, d.outgoing.task_id, d.message.metadata.message_type, d.outgoing.payload)
            for d in sorted(self._open.values(), key=lambda d: d.posted_at)
        ]

    def repost(self, tasks: Iterable[OpenTask]) -> None:
        """Offer again, after a restart, the tasks a checkpoint kept (same ids and bytes).

        The devices may not have joined yet: the task waits on the board for them.
        """
        for kept in tasks:
            task = task_pb2.Task.FromString(kept.payload)
            if task.task_id != kept.task_id or task.node_id != kept.node_id:
                raise ValueError(f"kept task {kept.task_id!r} does not match its bytes")
            message = Message(RecordDict(), kept.node_id, kept.message_type, group_id=str(task.server_round))
            message = with_message_id(message, kept.task_id)
            self._post(message, task, kept.payload)
