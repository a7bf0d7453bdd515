"""The asynchronous round driver: FedBuff over any fleet that can run tasks and report completions.

:func:`run_async_federation` keeps ``concurrency`` devices training, each on the newest
model (devices are picked uniformly at random, with the run's seed, from the fleet's
ready and idle ones, as FedBuff samples clients), feeds completions to the
:class:`~fedge.strategies.fedbuff.FedBuffAggregator` in the order they finish, applies an
aggregation step every ``buffer_size`` arrivals and evaluates each new model centrally.
The fleet is an :class:`AsyncFleet`: a simulated one whose clock jumps from completion to
completion (:class:`fedge.simulations.devices.async_fleet.SimulatedFleet`), or real
devices over gRPC whose completions arrive when they arrive.

Per step it records an :class:`AsyncStepRecord` (the fleet's clock, model version,
staleness and weight of every applied update, accuracy) and a
:class:`~fedge.server.federation.RoundRecord` (round = step) so ``results.json`` and
``fedge-report`` read async runs like synchronous ones.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Result

from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, RoundRecord
from fedge.server.traffic import TrafficLog
from fedge.strategies.fedbuff import Arrival, FedBuffAggregator

log = logging.getLogger(__name__)

#: Separates the device-picking random stream from every other seeded stream.
ASYNC_STREAM = 0xA5F1C


@dataclass(frozen=True)
class Completion:
    """A dispatch that finished (or was lost) on the fleet."""

    dispatch: int
    node_id: int
    reply: Message | None  # None: lost (the device went away); ``reason`` says why
    time_s: float  # the fleet's clock when it arrived (simulated or wall seconds)
    reason: str = ""


class FleetExhausted(RuntimeError):
    """Nothing can complete any more (no device will ever be ready); the run ends."""


class AsyncFleet(ABC):
    """What :func:`run_async_federation` needs from a backend."""

    @abstractmethod
    def now_s(self) -> float:
        """The fleet's clock: seconds since the run started (simulated or wall)."""

    @abstractmethod
    def ready_nodes(self) -> list[int]:
        """Nodes that can be sent a task now (online, connected), busy ones included;
        sorted, so picking from them is reproducible."""

    @abstractmethod
    def launch(self, messages: list[Message]) -> None:
        """Send these training instructions (one per idle node)."""

    @abstractmethod
    def next_completion(self, idle_wanted: bool = False) -> Completion | None:
        """The next finished dispatch, in completion order (blocks or advances the clock).

        ``None``: the clock moved on without a completion because nothing was in flight,
        or (``idle_wanted``: the driver has room for more tasks) because a device became
        ready first; the driver then launches and asks again. Raises
        :class:`FleetExhausted` when nothing can ever complete again.
        """


@dataclass
class AsyncStepRecord:
    """One aggregation step of an async run."""

    step: int
    version: int  # model version after the step
    time_s: float  # the fleet's clock when the step was applied
    accuracy: float
    loss: float
    nodes: list[int]
    staleness: list[int]  # per applied update
    weights: list[float]  # per applied update
    arrivals: int  # completions since the previous step (kept or not)
    discarded_stale: int  # of them, dropped past mode.max_staleness
    lost: int  # of them, lost or failed on the device
    refused: int  # of them, refused by the decoder or the reply validator
    abandoned: str | None = None


@dataclass
class AsyncFederationResult(FederationResult):
    """A synchronous-looking result (rounds = steps) plus the async records."""

    steps: list[AsyncStepRecord] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)  # every completion, in arrival order
    stopped: str = ""  # why the run ended before its steps, if it did
    in_flight_at_end: int = 0  # dispatches still training when the run ended (unfinished work)
    buffered_at_end: int = 0  # accepted updates waiting in the buffer when the run ended

    def async_report(self, aggregator: FedBuffAggregator) -> dict[str, Any]:
        """The ``async`` section of results.json."""
        staleness = [s for step in self.steps for s in step.staleness]
        histogram = np.bincount(np.asarray(staleness, dtype=np.int64)).tolist() if staleness else []
        arrivals = aggregator.log.arrivals
        return {
            "config": asdict(aggregator.config),
            "steps": [asdict(s) for s in self.steps],
            "staleness_histogram": histogram,  # index = staleness, value = applied updates
            "arrivals": len(arrivals),
            "applied": len(staleness),
            "discarded_stale": aggregator.log.discarded_stale,
            "lost": sum(1 for a in arrivals if a.reason.startswith("lost")),
            "refused": sum(1 for a in arrivals if a.reason.startswith("refused")) + sum(s.refused for s in aggregator.log.steps),
            "in_flight_at_end": self.in_flight_at_end,
            "buffered_at_end": self.buffered_at_end,
            "stopped": self.stopped,
            "time_s": self.steps[-1].time_s if self.steps else 0.0,
        }


def pick_nodes(rng: np.random.Generator, ready: list[int], count: int) -> list[int]:
    """``count`` of ``ready`` (or all of them), uniformly at random, in drawn order."""
    if count <= 0 or not ready:
        return []
    order = rng.permutation(len(ready))[: min(count, len(ready))]
    return [ready[i] for i in order]


def run_async_federation(
    aggregator: FedBuffAggregator,
    fleet: AsyncFleet,
    evaluator: CentralEvaluator | Callable[[ArrayRecord], tuple[float, float]],
    steps: int,
    seed: int = 0,
    traffic: TrafficLog | None = None,
    on_step: Callable[[RoundRecord], None] | None = None,
    stop_accuracy: float = 0.0,
    on_record: Callable[[AsyncStepRecord], None] | None = None,
) -> AsyncFederationResult:
    """Run ``steps`` aggregation steps (fewer if ``stop_accuracy`` > 0 is reached first or
    the fleet is exhausted); evaluate the model after each applied step.

    ``traffic`` (the Grid's TrafficLog, keyed by dispatch id) gives each step its bytes.
    ``on_record`` receives each step's :class:`AsyncStepRecord` as it is made (a
    checkpointing caller keeps them). A restored ``aggregator`` (resume) continues its
    step count; its arrivals before its last step are not counted again.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = np.random.default_rng([seed, ASYNC_STREAM])
    wall = [time.perf_counter()]
    loss, accuracy = evaluator(aggregator.model)
    rounds = [RoundRecord(round=0, accuracy=accuracy, loss=loss, uplink_bytes=0, downlink_bytes=0, wall_s=0.0, replies=0, failures=0)]
    if on_step is not None:
        on_step(rounds[0])
    records: list[AsyncStepRecord] = []
    train_metrics: dict[int, MetricRecord] = {}
    stopped, seen, last_time = "", _arrivals_applied(aggregator), aggregator.state.clock_s
    concurrency = aggregator.config.concurrency
    while len(aggregator.log.steps) < steps:
        busy = {d.node_id for d in aggregator.state.inflight.values()}
        idle = [n for n in fleet.ready_nodes() if n not in busy]
        chosen = pick_nodes(rng, idle, concurrency - len(busy))
        if chosen:
            fleet.launch([aggregator.instruction(node, fleet.now_s()) for node in chosen])
        try:
            completion = fleet.next_completion(idle_wanted=len(aggregator.state.inflight) < concurrency)
        except FleetExhausted as exc:
            stopped = str(exc)
            break
        if completion is None:
            continue
        aggregator.receive(completion.dispatch, completion.reply, completion.reason, completion.time_s)
        if not aggregator.ready():
            continue
        step = aggregator.aggregate()
        now = fleet.now_s()
        aggregator.state.clock_s = now
        if step.abandoned is None:
            loss, accuracy = evaluator(aggregator.model)
        arrivals = aggregator.log.arrivals[seen:]
        seen = len(aggregator.log.arrivals)
        record = AsyncStepRecord(
            step=len(aggregator.log.steps), version=step.version, time_s=now, accuracy=accuracy, loss=loss,
            nodes=step.nodes, staleness=step.staleness, weights=step.weights, arrivals=len(arrivals),
            discarded_stale=sum(1 for a in arrivals if a.reason.startswith("stale")),
            lost=sum(1 for a in arrivals if a.reason.startswith("lost")),
            refused=sum(1 for a in arrivals if a.reason.startswith("refused")) + step.refused,
            abandoned=step.abandoned,
        )
        records.append(record)
        if on_record is not None:
            on_record(record)
        up = down = 0
        if traffic is not None:
            for arrival in arrivals:
                entry = traffic.round(arrival.dispatch)
                up, down = up + entry.uplink_bytes, down + entry.downlink_bytes
        clock = time.perf_counter()
        round_record = RoundRecord(
            round=record.step, accuracy=accuracy, loss=loss, uplink_bytes=up, downlink_bytes=down,
            wall_s=clock - wall[0], replies=len(step.nodes), failures=record.lost, dropped=record.refused,
            train_loss=_float(step.metrics.get("train_loss")), sim_round_s=now - last_time, abandoned=step.abandoned,
        )
        wall[0], last_time = clock, now
        rounds.append(round_record)
        if step.metrics:
            train_metrics[record.step] = MetricRecord(step.metrics)
        if on_step is not None:
            on_step(round_record)
        if stop_accuracy > 0 and accuracy >= stop_accuracy:
            stopped = f"reached accuracy {accuracy:.4f} >= {stop_accuracy:g}"
            break
    final = aggregator.model
    result = Result(arrays=final, train_metrics_clientapp=train_metrics)
    return AsyncFederationResult(
        rounds=rounds, final_arrays=final, flower_result=result, steps=records, stopped=stopped,
        arrivals=list(aggregator.log.arrivals),
        in_flight_at_end=len(aggregator.state.inflight), buffered_at_end=len(aggregator.state.buffer),
    )


def _arrivals_applied(aggregator: FedBuffAggregator) -> int:
    """Arrivals up to the one that completed the last step (0 before any step): a resumed
    run's first step counts only the arrivals after it."""
    log_ = aggregator.log
    if not log_.steps:
        return 0
    last = set(log_.steps[-1].dispatches)
    for i in range(len(log_.arrivals) - 1, -1, -1):
        if log_.arrivals[i].dispatch in last:
            return i + 1
    return 0


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
