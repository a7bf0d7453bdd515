"""Flower's FedAvg, instrumented identically for both runtimes of the benchmark.

:class:`InstrumentedFedAvg` counts each round's successful replies (a failed client
would otherwise only show up as a faster, wrong round) and times ``aggregate_train``,
the server-side cost both runtimes share. :class:`RunOutcome` is what either runtime
hands back to the runner.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from bench.timing import Timeline


class InstrumentedFedAvg(FedAvg):
    """Flower's FedAvg recording replies and aggregation seconds per round."""

    def __init__(self, **options: float | int) -> None:
        super().__init__(**options)
        self.replies: dict[int, int] = {}  # round -> successful replies
        self.aggregate_s: dict[int, float] = {}  # round -> seconds in aggregate_train

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        start = time.perf_counter()
        replies = list(replies)
        self.replies[server_round] = sum(not reply.has_error() for reply in replies)
        aggregated = super().aggregate_train(server_round, replies)
        self.aggregate_s[server_round] = time.perf_counter() - start
        return aggregated

    def failed_rounds(self, expected: int) -> dict[int, int]:
        """Rounds whose successful replies fell short of ``expected``: round -> replies."""
        return {r: n for r, n in self.replies.items() if n != expected}


@dataclass
class RunOutcome:
    """One runtime's run: its timeline, final global model and server-side figures."""

    timeline: Timeline
    final_arrays: ArrayRecord
    aggregate_s: dict[int, float] = field(default_factory=dict)  # FedAvg.aggregate_train seconds per round
    client_torch_threads: float | None = None  # torch intra-op threads the clients trained with
