"""Tasks waiting for their devices, and the answers coming back.

The round driver posts a round's tasks and waits; devices take their task with a
long poll and answer it by task id. A task stays on offer until answered or
withdrawn, so a device that reconnects mid-round is offered the same task again.
Answers are idempotent by task id: the first is kept, a repeat is a duplicate, an
answer for a task that was withdrawn (round over) is refused as expired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass
class Outgoing:
    """One Task on its way to a device, and what came back."""

    task_id: str
    node_id: int
    server_round: int
    payload: bytes  # serialised Task
    sha256: bytes
    signature: bytes  # Ed25519 over the digest (empty when unsigned)
    answer: bytes | None = None  # serialised Update
    downlink_wire_bytes: int = 0  # gRPC message bytes sent for this task (all attempts)
    uplink_wire_bytes: int = 0  # gRPC message bytes received for this task (all attempts)


class AnswerStatus(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # the round it belonged to is over
    UNKNOWN = "unknown"  # never posted by this server (e.g. before a restart)
    WRONG_NODE = "wrong node"


#: What :meth:`TaskBoard.take` returns once the federation is over.
FINISHED = object()


class TaskBoard:
    """Thread-safe mailboxes of tasks per node, with answer bookkeeping."""

    def __init__(self) -> None:
        self._pending: dict[str, Outgoing] = {}  # task id -> unanswered task on offer
        self._done: dict[str, int] = {}  # task id -> node id, answered
        self._withdrawn: set[str] = set()
        self._finished = False
        self._cond = threading.Condition()

    def post(self, tasks: Sequence[Outgoing]) -> None:
        with self._cond:
            for task in tasks:
                self._pending[task.task_id] = task
            self._cond.notify_all()

    def take(
        self,
        node_id: int,
        wait_s: float,
        *,
        keep_waiting: Callable[[], bool] = lambda: True,
        tick_s: float = 1.0,
        on_tick: Callable[[], None] = lambda: None,
    ) -> Outgoing | object | None:
        """The oldest unanswered task for ``node_id``, waiting up to ``wait_s``.

        Returns the task, ``None`` when none came in time (or ``keep_waiting``
        turned false), or :data:`FINISHED`. ``on_tick`` runs every ``tick_s`` while
        waiting (the servicer uses it to keep the device alive).
        """
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                if self._finished:
                    return FINISHED
                for task in self._pending.values():
                    if task.node_id == node_id:
                        return task
                left = deadline - time.monotonic()
                if left <= 0 or not keep_waiting():
                    return None
                self._cond.wait(min(left, tick_s))
                on_tick()

    def answer(self, node_id: int, task_id: str, update: bytes, wire_bytes: int) -> AnswerStatus:
        """Record a device's Update for ``task_id``."""
        with self._cond:
            task = self._pending.get(task_id)
            if task is None:
                if task_id in self._done:
                    return AnswerStatus.DUPLICATE if self._done[task_id] == node_id else AnswerStatus.WRONG_NODE
                return AnswerStatus.EXPIRED if task_id in self._withdrawn else AnswerStatus.UNKNOWN
            if task.node_id != node_id:
                return AnswerStatus.WRONG_NODE
            task.answer = update
            task.uplink_wire_bytes += wire_bytes
            del self._pending[task_id]
            self._done[task_id] = node_id
            self._cond.notify_all()
            return AnswerStatus.ACCEPTED

    def wait(
        self,
        tasks: Sequence[Outgoing],
        deadline: float,
        given_up: Callable[[Outgoing], bool] = lambda t: False,
        tick_s: float = 0.5,
    ) -> None:
        """Block until every task is answered or given up on, or ``deadline`` (monotonic)."""
        with self._cond:
            while True:
                open_tasks = [t for t in tasks if t.answer is None and not given_up(t)]
                left = deadline - time.monotonic()
                if not open_tasks or left <= 0:
                    return
                self._cond.wait(min(left, tick_s))

    def withdraw(self, tasks: Sequence[Outgoing]) -> None:
        """Take unanswered tasks off offer (their round is over)."""
        with self._cond:
            for task in tasks:
                if self._pending.pop(task.task_id, None) is not None:
                    self._withdrawn.add(task.task_id)

    def add_downlink(self, task: Outgoing, wire_bytes: int) -> None:
        with self._cond:
            task.downlink_wire_bytes += wire_bytes

    def finish(self) -> None:
        """The federation is over: every waiting and later pull returns FINISHED."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished
