"""Tasks waiting for their devices, and the answers coming back.

The round driver (a Flower strategy in the main thread) posts a round's tasks and
waits; devices take their task with a long poll (a coroutine on the gRPC server's
event loop) and answer it by task id. A task stays on offer until answered or
withdrawn, so a device that reconnects mid-round is offered the same task again.
Answers are idempotent by task id: the first is kept, a repeat is a duplicate, an
answer for a task that was withdrawn (round over) is refused as expired.

Threads and the event loop meet here: every method that changes state takes one
``threading.Condition`` for a few dictionary operations only (never while waiting),
so a coroutine may call it without stalling the loop. The grid thread waits on that
condition (:meth:`TaskBoard.wait`); a long poll waits on an ``asyncio`` future that
:meth:`TaskBoard.post` and :meth:`TaskBoard.finish` resolve through
``loop.call_soon_threadsafe``, so a waiting device costs a future, not a thread.
"""

from __future__ import annotations

import asyncio
import math
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
    max_update_bytes: int | None = None  # largest Update accepted for it (None: the server's limit)
    arrival: int = 0  # 1, 2, ...: the order answers reached this board in (0: not answered)


class AnswerStatus(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # the round it belonged to is over
    UNKNOWN = "unknown"  # never posted by this server (e.g. before a restart)
    WRONG_NODE = "wrong node"
    OPEN = "open"  # on offer and unanswered: an answer may come (only from :meth:`TaskBoard.status`)


#: What :meth:`TaskBoard.take` returns once the federation is over.
FINISHED = object()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TaskBoard:
    """Thread-safe mailboxes of tasks per node, with answer bookkeeping."""

    def __init__(self) -> None:
        self._pending: dict[str, Outgoing] = {}  # task id -> unanswered task on offer
        self._by_node: dict[int, dict[str, Outgoing]] = {}  # node id -> its pending tasks, oldest first
        self._done: dict[str, int] = {}  # task id -> node id, answered
        self._withdrawn: set[str] = set()
        self._finished = False
        self._cond = threading.Condition()
        self._waiters: dict[int, set[asyncio.Future[None]]] = {}  # node id -> long polls waiting
        self._arrivals = 0  # answers accepted so far (numbers them: Outgoing.arrival)

    def post(self, tasks: Sequence[Outgoing]) -> None:
        with self._cond:
            for task in tasks:
                self._pending[task.task_id] = task
                self._by_node.setdefault(task.node_id, {})[task.task_id] = task
                self._wake_node(task.node_id)
            self._cond.notify_all()

    async def take(
        self, node_id: int, wait_s: float, *, stop: asyncio.Future[None] | None = None
    ) -> Outgoing | object | None:
        """The oldest unanswered task for ``node_id``, waiting up to ``wait_s`` seconds.

        Returns the task, ``None`` when none came in time (or ``stop`` resolved: the
        poll was superseded), or :data:`FINISHED`. Runs on the server's event loop.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            with self._cond:
                if self._finished:
                    return FINISHED
                mine = self._by_node.get(node_id)
                if mine:
                    return next(iter(mine.values()))
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(node_id, set()).add(waiter)
            try:
                left = deadline - loop.time()
                if left <= 0 or (stop is not None and stop.done()):
                    return None
                waiting = {waiter} if stop is None else {waiter, stop}
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                with self._cond:
                    polls = self._waiters.get(node_id)
                    if polls is not None:
                        polls.discard(waiter)
                        if not polls:
                            del self._waiters[node_id]

    def status(self, node_id: int, task_id: str) -> tuple[AnswerStatus, Outgoing | None]:
        """What an answer for ``task_id`` from ``node_id`` would be, and the task if it is open."""
        with self._cond:
            task = self._pending.get(task_id)
            if task is None:
                return self._closed(node_id, task_id), None
            if task.node_id != node_id:
                return AnswerStatus.WRONG_NODE, None
            return AnswerStatus.OPEN, task

    def answer(self, node_id: int, task_id: str, update: bytes, wire_bytes: int) -> AnswerStatus:
        """Record a device's Update for ``task_id``."""
        with self._cond:
            task = self._pending.get(task_id)
            if task is None:
                return self._closed(node_id, task_id)
            if task.node_id != node_id:
                return AnswerStatus.WRONG_NODE
            task.answer = update
            task.uplink_wire_bytes += wire_bytes
            self._arrivals += 1
            task.arrival = self._arrivals
            self._remove(task)
            self._done[task_id] = node_id
            self._cond.notify_all()
            return AnswerStatus.ACCEPTED

    def wait(
        self,
        tasks: Sequence[Outgoing],
        deadline: float,
        given_up: Callable[[Outgoing], bool] = lambda t: False,
        tick_s: float = 0.5,
        *,
        quorum: int | None = None,
        grace_s: float = math.inf,
    ) -> None:
        """Block until every task is answered or given up on, or ``deadline`` (monotonic).

        With ``quorum``: once that many tasks are answered, the others get at most
        ``max(grace_s, time the quorum took)`` more seconds, so one device that stays
        alive but never answers cannot hold the round to ``deadline``.
        """
        start = time.monotonic()
        with self._cond:
            while True:
                open_tasks = [t for t in tasks if t.answer is None and not given_up(t)]
                now = time.monotonic()
                if quorum is not None and len(tasks) - sum(t.answer is None for t in tasks) >= quorum:
                    deadline = min(deadline, now + max(grace_s, now - start))
                    quorum = None  # the grace period starts once
                left = deadline - now
                if not open_tasks or left <= 0:
                    return
                self._cond.wait(min(left, tick_s))

    def wait_any(
        self,
        tasks: Sequence[Outgoing],
        deadline: float,
        given_up: Callable[[Outgoing], bool] = lambda t: False,
        tick_s: float = 0.5,
    ) -> None:
        """Block until one of ``tasks`` is answered or given up on, or ``deadline`` (monotonic).

        The asynchronous grid's wait (:mod:`fedge.server.async_grpc_grid`): it hands out
        each answer as it comes instead of waiting for a round. ``given_up`` is checked
        every ``tick_s`` seconds (a device going silent wakes nobody).
        """
        with self._cond:
            while True:
                if any(t.answer is not None or given_up(t) for t in tasks):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, tick_s))

    def withdraw(self, tasks: Sequence[Outgoing]) -> None:
        """Take unanswered tasks off offer (their round is over)."""
        with self._cond:
            for task in tasks:
                if self._pending.get(task.task_id) is not None:
                    self._remove(self._pending[task.task_id])
                    self._withdrawn.add(task.task_id)

    def add_downlink(self, task: Outgoing, wire_bytes: int) -> None:
        with self._cond:
            task.downlink_wire_bytes += wire_bytes

    def finish(self) -> None:
        """The federation is over: every waiting and later pull returns FINISHED."""
        with self._cond:
            self._finished = True
            for node_id in list(self._waiters):
                self._wake_node(node_id)
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    # -- internals (callers hold self._cond) ----------------------------------------
    def _closed(self, node_id: int, task_id: str) -> AnswerStatus:
        if task_id in self._done:
            return AnswerStatus.DUPLICATE if self._done[task_id] == node_id else AnswerStatus.WRONG_NODE
        return AnswerStatus.EXPIRED if task_id in self._withdrawn else AnswerStatus.UNKNOWN

    def _remove(self, task: Outgoing) -> None:
        del self._pending[task.task_id]
        mine = self._by_node.get(task.node_id)
        if mine is not None:
            mine.pop(task.task_id, None)
            if not mine:
                del self._by_node[task.node_id]

    def _wake_node(self, node_id: int) -> None:
        for waiter in self._waiters.get(node_id, ()):
            waiter.get_loop().call_soon_threadsafe(_wake, waiter)
