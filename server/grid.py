"""FedgeGrid: the part of a ``flwr.serverapp.Grid`` that every fedge backend shares.

A backend subclass only implements :meth:`FedgeGrid._deliver`: take serialised Task
protos for some nodes and return serialised Update protos (or ``None`` for a node that
never answered). Message bookkeeping, Task/Update translation and byte accounting
live here, so the in-process, gRPC and Ray backends count the same bytes.

With :meth:`FedgeGrid.observe_deliveries`, a
:class:`~fedge.server.delivery_observer.DeliveryObserver` sits around ``_deliver``
(``fedge-sim``'s device simulator): unreachable nodes are not sent their task, each
training answer is reported with its real byte counts, and answers the observer calls
late become failure replies (every backend alike).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterable, Sequence, Sized
from typing import Any
from uuid import uuid4

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedge.protos.v1 import task_pb2
from fedge.server.delivery_observer import DeliveryObserver, TrainingDelivery
from fedge.server.identity import DEFAULT_RUN_ID, ensure_task_identity
from fedge.server.traffic import TrafficLog
from fedge.server.message_translation import failure_reply, message_to_task, update_to_reply, with_message_id

log = logging.getLogger(__name__)

#: A backend's answer to one task: the serialised Update; the Update itself, from a backend
#: whose devices run in this process (no serialise-and-parse round trip; it is counted at
#: its serialised size all the same, :func:`answer_size`); or None (the node never answered).
Answer = bytes | task_pb2.Update | None


def answer_size(answer: Answer) -> int:
    """The bytes ``answer`` puts on the wire: its length, or its Update's serialised size
    (``ByteSize()``: computed, not serialised); 0 for no answer."""
    if answer is None:
        return 0
    return answer.ByteSize() if isinstance(answer, task_pb2.Update) else len(answer)


class FedgeGrid(Grid):
    """A Grid whose nodes are fedge devices reached through :meth:`_deliver`."""

    def __init__(self, node_ids: Sequence[int], run_id: int = DEFAULT_RUN_ID) -> None:
        if len(set(node_ids)) != len(node_ids):
            raise ValueError("node ids must be unique")
        self._node_ids = sorted(int(n) for n in node_ids)
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.traffic = TrafficLog()
        self.delivery_observer: DeliveryObserver | None = None
        ensure_task_identity(run_id)

    def observe_deliveries(self, observer: DeliveryObserver | None) -> None:
        """Let ``observer`` decide reachability and lateness of deliveries (None: off)."""
        missing = [n for n in self._node_ids if not observer.covers(n)] if observer is not None else []
        if missing:
            raise ValueError(f"nodes {missing} have no device profile")
        self.delivery_observer = observer

    def transport_report(self) -> dict[str, object]:
        """Transport-level figures for ``results.json`` (a Grid over a real network adds
        its measured bytes); none for a Grid without a transport of its own."""
        return {}

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
        batch: list[tuple[Message, task_pb2.Task, Sized]] = []
        ids: list[str] = []
        train_rounds: set[int] = set()
        for message in messages:
            node = message.metadata.dst_node_id
            if not self._is_known(node):
                raise ValueError(f"message for unknown node {node}")
            message = with_message_id(message, uuid4().hex)
            ids.append(message.metadata.message_id)
            task, payload = self._encode(message)
            if task.kind == "train":
                train_rounds.add(task.server_round)
            offline = (
                self.delivery_observer.offline_reason(node, task.server_round)
                if self.delivery_observer is not None
                else None
            )
            if offline is not None:
                self.traffic.received(task.server_round, 0, ok=False, node_id=node)
                self._replies[message.metadata.message_id] = failure_reply(message, offline)
                continue
            self.traffic.sent(task.server_round, len(payload), node)
            batch.append((message, task, payload))
        answers = self._deliver([(m.metadata.dst_node_id, p) for m, _, p in batch]) if batch else []
        updates = [self._parse(answer) for answer in answers]
        late = self._settle_devices(batch, answers, updates, train_rounds)
        for (message, task, _), answer, update, straggler in zip(batch, answers, updates, late, strict=True):
            self._replies[message.metadata.message_id] = self._to_reply(
                message, task.server_round, answer, update, straggler
            )
        return ids

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

    def _encode(self, message: Message) -> tuple[task_pb2.Task, Sized]:
        """The Task of ``message`` (the Grid reads its kind and round) and what
        :meth:`_deliver` is given for it, whose ``len()`` is the serialised Task's size in
        bytes. Here: the serialised Task. (A backend that shares one broadcast between
        many tasks returns a lighter object of the same length.)"""
        task = message_to_task(message)
        return task, task.SerializeToString()

    @abstractmethod
    def _deliver(self, tasks: Sequence[tuple[int, Any]]) -> list[Answer]:
        """Send each ``(node_id, Task bytes)`` (or what :meth:`_encode` made for the
        task); return Update bytes per task, in order (an in-process backend may return
        the Update objects its devices made: see :data:`Answer`).

        ``None`` means the node never answered (lost, timed out).
        """

    def close(self) -> None:
        """Release backend resources (worker processes, channels)."""

    def __enter__(self) -> FedgeGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _parse(answer: Answer) -> task_pb2.Update | Exception | None:
        """The Update in ``answer``; the parse error if it is broken; None if no answer."""
        if answer is None or isinstance(answer, task_pb2.Update):
            return answer
        update = task_pb2.Update()
        try:
            update.ParseFromString(answer)
        except Exception as exc:  # a broken device must not break the round
            return exc
        return update

    def _settle_devices(
        self,
        batch: Sequence[tuple[Message, task_pb2.Task, Sized]],
        answers: Sequence[Answer],
        updates: Sequence[task_pb2.Update | Exception | None],
        train_rounds: set[int],
    ) -> list[str | None]:
        """Report the training answers to the delivery observer; per task, why it is
        dropped as late (``None``: on time, or not observed)."""
        late: list[str | None] = [None] * len(batch)
        observer = self.delivery_observer
        if observer is None:
            return late
        # every training round seen gets settled, even one whose nodes were all unreachable,
        # so the observer's clock moves on
        by_round: dict[int, list[tuple[int, TrainingDelivery]]] = {r: [] for r in sorted(train_rounds)}
        for i, ((message, task, payload), answer, update) in enumerate(zip(batch, answers, updates)):
            if task.kind != "train" or not isinstance(update, task_pb2.Update):
                continue  # evaluation is not priced; lost or broken answers are failures anyway
            samples = int(update.metrics.get("train_samples", 0.0))
            job = TrainingDelivery(message.metadata.dst_node_id, len(payload), answer_size(answer), samples)
            by_round.setdefault(task.server_round, []).append((i, job))
        for server_round, jobs in by_round.items():
            verdicts = observer.settle_training(server_round, [job for _, job in jobs])
            for (i, _), reason in zip(jobs, verdicts, strict=True):
                late[i] = reason
        return late

    def _to_reply(
        self,
        message: Message,
        group: int,
        answer: Answer,
        update: task_pb2.Update | Exception | None,
        straggler: str | None = None,
    ) -> Message:
        node = message.metadata.dst_node_id
        if answer is None or update is None:
            self.traffic.received(group, 0, ok=False, node_id=node)
            return failure_reply(message, f"node {node} did not answer")
        if isinstance(update, Exception):
            self.traffic.received(group, answer_size(answer), ok=False, node_id=node)
            return failure_reply(message, f"node {node} sent unparsable bytes: {update}")
        compute_s = update.metrics.get("compute_s", 0.0)
        if straggler is not None:  # its Update never arrived in time: no uplink bytes
            log.debug(straggler)
            self.traffic.received(group, 0, ok=False, node_id=node, compute_s=compute_s)
            return failure_reply(message, straggler)
        self.traffic.received(group, answer_size(answer), ok=not update.error, node_id=node, compute_s=compute_s)
        return update_to_reply(update, message)
