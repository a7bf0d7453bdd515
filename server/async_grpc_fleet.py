"""GrpcFleet: real devices over gRPC as the asynchronous driver's :class:`AsyncFleet`.

:func:`fedge.server.async_driver.run_async_federation` asks a fleet for ready nodes,
launches training instructions on it and waits for completions. Over gRPC that is an
:class:`~fedge.server.async_grpc_grid.AsyncGrpcGrid`:

* ``ready_nodes``: the live devices without a task open on the grid;
* ``launch``: one non-blocking :meth:`~AsyncGrpcGrid.submit` per instruction;
* ``next_completion``: the next reply in the order pushes reached the server (a failure
  reply for a device that went silent, left or ran past ``server.round_timeout_s``),
  whose dispatch id is the instruction's ``group_id`` (the Task's ``server_round``).
  With ``idle_wanted`` it also returns ``None`` as soon as a device is idle (one that
  joined late), so the driver gives it work; otherwise it waits up to ``wait_s``.
* the clock is wall seconds this server has run, continuing from the checkpoint's
  clock after a restart (the time the server was down is not counted).

``before_wait`` runs before every wait, after the driver has taken the previous
completion, aggregated and launched: the safe point to checkpoint (nothing half done).
When no device is alive and nothing is in flight for ``server.join_timeout_s``, the
fleet is exhausted and the run ends with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flwr.app import Message

from fedge.server.async_driver import AsyncFleet, Completion, FleetExhausted
from fedge.server.async_grpc_grid import AsyncGrpcGrid

#: Seconds between looks for an idle device while the driver has room for more tasks.
IDLE_POLL_S = 0.5


class GrpcFleet(AsyncFleet):
    """The devices joined to an :class:`AsyncGrpcGrid`'s server.

    Parameters
    ----------
    grid:
        The grid the tasks travel through.
    clock_offset_s:
        Seconds already on the run's clock (a resumed run's ``AsyncState.clock_s``).
    wait_s:
        Longest single wait for a completion before the driver gets ``None`` and looks again.
    before_wait:
        Called before each wait (the checkpoint hook).
    """

    def __init__(
        self,
        grid: AsyncGrpcGrid,
        clock_offset_s: float = 0.0,
        wait_s: float = 5.0,
        before_wait: Callable[[], None] | None = None,
    ) -> None:
        self.grid = grid
        self.wait_s = wait_s
        self.before_wait = before_wait
        self._offset = clock_offset_s
        self._start = time.monotonic()
        self._alone_since: float | None = None  # when the fleet last had no device and no task

    def now_s(self) -> float:
        return self._offset + time.monotonic() - self._start

    def ready_nodes(self) -> list[int]:
        return self.grid.idle_node_ids()

    def launch(self, messages: list[Message]) -> None:
        for message in messages:
            self.grid.submit(message)

    def next_completion(self, idle_wanted: bool = False) -> Completion | None:
        if self.before_wait is not None:
            self.before_wait()
        self._check_alone()
        deadline = time.monotonic() + self.wait_s
        while True:
            left = deadline - time.monotonic()
            reply = self.grid.next_completion(min(left, IDLE_POLL_S) if idle_wanted else left)
            if reply is not None:
                return self._completion(reply)
            if (idle_wanted and self.grid.idle_node_ids()) or time.monotonic() >= deadline:
                return None

    def _completion(self, reply: Message) -> Completion:
        reason = (reply.error.reason or "") if reply.has_error() else ""
        return Completion(int(reply.metadata.group_id), reply.metadata.src_node_id, reply, self.now_s(), reason)

    def _check_alone(self) -> None:
        """``FleetExhausted`` after ``server.join_timeout_s`` with no device alive and no task open."""
        if self.grid.get_node_ids() or self.grid.busy_node_ids():
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
        elif now - self._alone_since > self.grid.settings.join_timeout_s:
            raise FleetExhausted(f"no device connected for server.join_timeout_s={self.grid.settings.join_timeout_s:g} s")
