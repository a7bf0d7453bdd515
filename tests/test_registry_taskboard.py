"""Node registry liveness and the task board's idempotent answers (issue 5)."""

import asyncio
import threading
import time

import pytest

from fedge.server.registry import MIN_NODE_ID, NodeRegistry, node_id_for
from fedge.server.taskboard import FINISHED, AnswerStatus, Outgoing, TaskBoard


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_node_ids_are_stable_and_numeric_ids_are_kept():
    assert node_id_for("1007") == 1007
    assert node_id_for("pi-kitchen") == node_id_for("pi-kitchen") != node_id_for("pi-garden")
    assert node_id_for("pi-kitchen") >= MIN_NODE_ID
    assert node_id_for("1") >= MIN_NODE_ID and node_id_for("1") != 1  # Flower's reserved ids are hashed away


def test_liveness_expires_and_leave_is_immediate():
    clock = FakeClock()
    registry = NodeRegistry(liveness_s=15, clock=clock)
    a = registry.join("1000", {"cpu_count": 4}, ["fp32"])
    registry.join("1001", {}, ["fp32"])
    assert registry.live_node_ids() == [1000, 1001]
    clock.now += 10
    registry.touch("1001")
    clock.now += 10  # 1000 silent for 20 s, 1001 for 10 s
    assert registry.live_node_ids() == [1001] and registry.knows(1000) and not registry.is_alive(1000)
    registry.leave("1001")
    assert registry.live_node_ids() == [] and registry.touch("1001") is None
    again = registry.join("1000", {}, ["fp32"])
    assert again.node_id == a.node_id and again.joins == 2 and registry.live_node_ids() == [1000]


def test_wait_for_devices():
    registry = NodeRegistry(liveness_s=15)
    assert not registry.wait_for(1, timeout_s=0.05)
    threading.Timer(0.1, lambda: registry.join("1000", {}, [])).start()
    assert registry.wait_for(1, timeout_s=5)


def _task(task_id, node_id, server_round=1):
    return Outgoing(task_id, node_id, server_round, b"task", b"d" * 32, b"")


def test_answers_are_idempotent_by_task_id():
    board = TaskBoard()
    board.post([_task("a", 1000), _task("b", 1001)])
    assert board.answer(1001, "a", b"u", 10) is AnswerStatus.WRONG_NODE
    assert board.answer(1000, "a", b"u", 10) is AnswerStatus.ACCEPTED
    assert board.answer(1000, "a", b"u", 10) is AnswerStatus.DUPLICATE
    assert board.answer(1000, "zzz", b"u", 10) is AnswerStatus.UNKNOWN
    board.withdraw([_task("b", 1001)])
    assert board.answer(1001, "b", b"u", 10) is AnswerStatus.EXPIRED


def test_take_offers_the_same_task_until_answered_then_waits():
    board = TaskBoard()
    task = _task("a", 1000)
    board.post([task])
    take = lambda node, wait_s: asyncio.run(board.take(node, wait_s))  # noqa: E731  (a long poll, on a loop)
    assert take(1000, 0.1) is task
    assert take(1000, 0.1) is task  # a reconnecting device is offered it again
    assert take(1001, 0.05) is None
    board.answer(1000, "a", b"u", 1)
    start = time.monotonic()
    assert take(1000, 0.2) is None and time.monotonic() - start >= 0.2
    board.finish()
    assert take(1000, 5) is FINISHED


@pytest.mark.parametrize("gone", [False, True])
def test_round_wait_ends_when_answered_or_everyone_left_is_gone(gone):
    board = TaskBoard()
    tasks = [_task("a", 1000), _task("b", 1001)]
    board.post(tasks)
    board.answer(1000, "a", b"u", 1)
    start = time.monotonic()
    board.wait(tasks, deadline=start + 0.5, given_up=lambda t: gone and t.node_id == 1001, tick_s=0.05)
    waited = time.monotonic() - start
    assert (waited < 0.3) if gone else (waited >= 0.5)
