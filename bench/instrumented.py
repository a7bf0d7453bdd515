"""The strategies of the runner benchmark, instrumented alike on both runtimes.

:class:`AggregationTally` counts each round's successful replies (a failed client would
otherwise only show up as a faster, wrong round) and times the server's aggregation of
them. Flower's side tallies ``FedAvg.aggregate_train`` (:class:`InstrumentedFedAvg`);
fedge's side tallies :class:`~fedge.strategies.CompressedStrategy`'s ``aggregate_train``
around a plain ``FedAvg`` (:class:`InstrumentedCompressed`): decoding, validation and
FedAvg's mean together, the way ``fedge-sim`` runs FedAvg (an inner FedAvg whose
``aggregate_train`` were overridden would not take the streamed mean,
:mod:`fedge.strategies.streamed_mean`). :class:`RunOutcome` is what either runtime hands
back to the runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from bench.timing import Timeline
from fedge.strategies import CompressedStrategy

Aggregated = tuple[ArrayRecord | None, MetricRecord | None]


@dataclass
class AggregationTally:
    """Per round: successful replies and seconds in ``aggregate_train``."""

    replies: dict[int, int] = field(default_factory=dict)  # round -> successful replies
    aggregate_s: dict[int, float] = field(default_factory=dict)  # round -> seconds in aggregate_train

    def timed(self, server_round: int, replies: Iterable[Message],
              aggregate: Callable[[list[Message]], Aggregated]) -> Aggregated:
        """``aggregate(replies)``, its replies counted and its seconds recorded."""
        start = time.perf_counter()
        replies = list(replies)
        self.replies[server_round] = sum(not reply.has_error() for reply in replies)
        aggregated = aggregate(replies)
        self.aggregate_s[server_round] = time.perf_counter() - start
        return aggregated

    def failed_rounds(self, expected: int) -> dict[int, int]:
        """Rounds whose successful replies fell short of ``expected``: round -> replies."""
        return {r: n for r, n in self.replies.items() if n != expected}


class InstrumentedFedAvg(FedAvg):
    """Flower's FedAvg recording replies and aggregation seconds per round (Flower's side)."""

    def __init__(self, **options: float | int) -> None:
        super().__init__(**options)
        self.tally = AggregationTally()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Aggregated:
        return self.tally.timed(server_round, replies, lambda kept: super(InstrumentedFedAvg, self).aggregate_train(server_round, kept))


class InstrumentedCompressed(CompressedStrategy):
    """CompressedStrategy (fp32 both ways) around Flower's plain FedAvg, recording replies
    and aggregation seconds per round (fedge's side)."""

    def __init__(self, **options: float | int) -> None:
        super().__init__(FedAvg(**options), uplink="fp32", downlink="fp32")
        self.tally = AggregationTally()

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Aggregated:
        return self.tally.timed(server_round, replies, lambda kept: super(InstrumentedCompressed, self).aggregate_train(server_round, kept))

    def failed_rounds(self, expected: int) -> dict[int, int]:
        """As :meth:`AggregationTally.failed_rounds`, replies the decoder refused not counted."""
        dropped: dict[int, int] = {}
        for entry in self.log.dropped:
            dropped[entry.server_round] = dropped.get(entry.server_round, 0) + 1
        kept = {r: n - dropped.get(r, 0) for r, n in self.tally.replies.items()}
        return {r: n for r, n in kept.items() if n != expected}


@dataclass
class RunOutcome:
    """One runtime's run: its timeline, final global model and server-side figures."""

    timeline: Timeline
    final_arrays: ArrayRecord
    aggregate_s: dict[int, float] = field(default_factory=dict)  # aggregate_train seconds per round
    client_torch_threads: float | None = None  # torch intra-op threads the clients trained with
