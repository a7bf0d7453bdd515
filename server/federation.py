"""The round driver: a Flower strategy's ``start`` over a fedge Grid, with metrics.

:func:`run_federation` calls ``strategy.start(grid=...)`` with a central evaluation
callback that also closes each round's record (accuracy, loss, bytes up and down,
wall seconds, and with device profiles simulated seconds, joules, stragglers), so the per-round metrics come from one place for every backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp.strategy import Result, Strategy

from fedge.server.evaluation import Evaluate
from fedge.server.grid import FedgeGrid
from fedge.strategies.compressed import CompressedStrategy, CompressionLog, as_model_dtypes
from fedge.strategies.privacy import PrivacyLedger

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    """Metrics of one round; round 0 is the initial model (no traffic)."""

    round: int
    accuracy: float | None  # central test accuracy of the global model after the round, [0, 1]; None: not evaluated (eval_every)
    loss: float | None  # central test loss; None: not evaluated
    uplink_bytes: int  # serialised Update protos received this round
    downlink_bytes: int  # serialised Task protos sent this round
    wall_s: float  # seconds since the previous round ended
    replies: int  # successful client replies
    failures: int  # failed or lost clients (stragglers and offline devices included)
    dropped: int = 0  # replies refused by the decoder or the reply validator (reasons: dropped_replies)
    train_loss: float | None = None  # mean client training loss (aggregated)
    federated_accuracy: float | None = None  # clients' evaluation on their own data, if run
    # Simulated devices (device=..., the Grid's delivery observer); None / 0 without profiles:
    sim_round_s: float | None = None  # simulated round time: slowest answer waited for (or the deadline)
    energy_j: float | None = None  # joules of every device that worked, stragglers included
    stragglers: int = 0  # replies past server.round_deadline_s, dropped (counted in failures)
    unavailable: int = 0  # sampled devices that were offline (counted in failures)
    abandoned: str | None = None  # why the round's aggregate was not applied (the model stayed), if it was not
    epsilon: float | None = None  # DP runs: privacy spent so far at the run's delta (fedge.strategies.privacy)


@dataclass
class FederationResult:
    """Everything a run produced."""

    rounds: list[RoundRecord]
    final_arrays: ArrayRecord  # the final global model in the network's own dtypes (final_model.npz)
    flower_result: Result = field(repr=False)  # Flower's own; its arrays as the strategy keeps them (FedOpt: float64)

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]

    @property
    def final_accuracy(self) -> float:
        """Central test accuracy after the last round (always evaluated, whatever ``eval_every``)."""
        accuracy = self.final.accuracy
        if accuracy is None:
            raise ValueError(f"round {self.final.round} was not evaluated")
        return accuracy

    def to_dict(self) -> dict:
        return {"rounds": [asdict(r) for r in self.rounds]}


def run_federation(
    strategy: Strategy,
    grid: FedgeGrid,
    initial_arrays: ArrayRecord,
    evaluator: Evaluate,
    num_rounds: int,
    train_config: ConfigRecord | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    timeout_s: float = 3600.0,
    dropped_log: CompressionLog | None = None,
    privacy: PrivacyLedger | None = None,
    eval_every: int = 1,
) -> FederationResult:
    """Run ``num_rounds`` rounds of ``strategy`` over ``grid``; evaluate centrally every
    ``eval_every`` rounds (see :func:`evaluated`), the other rounds' records have
    ``accuracy`` and ``loss`` ``None``.

    ``dropped_log`` (a CompressedStrategy's ``log``; by default ``strategy.log`` when
    ``strategy`` is one) gives each record its ``dropped`` count, replies the decoder
    refused (those are not counted as ``replies``). A wrapper around a
    CompressedStrategy passes the inner strategy's log.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if dropped_log is None and isinstance(strategy, CompressedStrategy):
        dropped_log = strategy.log
    rounds: list[RoundRecord] = []
    clock = [time.perf_counter()]

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        loss: float | None = None
        accuracy: float | None = None
        if evaluated(server_round, num_rounds, eval_every):
            loss, accuracy = evaluator(arrays)
        now = time.perf_counter()
        traffic = grid.traffic.round(server_round)
        dropped = len(dropped_log.dropped_in(server_round)) if dropped_log is not None else 0
        abandoned = dropped_log.abandoned_in(server_round) if dropped_log is not None else None
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            uplink_bytes=traffic.uplink_bytes,
            downlink_bytes=traffic.downlink_bytes,
            wall_s=now - clock[0],
            replies=traffic.replies - dropped,
            failures=traffic.failures,
            dropped=dropped,
            abandoned=abandoned,
        )
        observer = grid.delivery_observer
        if observer is not None and server_round > 0:
            simulated = observer.round_costs(server_round)
            record.sim_round_s, record.energy_j = simulated.time_s, simulated.energy_j
            record.stragglers, record.unavailable = simulated.stragglers, simulated.unavailable
        if privacy is not None and server_round > 0:
            record.epsilon = privacy.epsilon_after(server_round)
        clock[0] = now
        rounds.append(record)
        if on_round is not None:
            on_round(record)
        if accuracy is None or loss is None:
            return None  # not evaluated this round: Flower records nothing
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=num_rounds,
        timeout=timeout_s,
        train_config=train_config,
        evaluate_fn=evaluate_fn,
    )
    attach_client_metrics(rounds, result)
    # Flower's Result starts with an empty ArrayRecord: no round aggregated (all abandoned) = the initial model
    final_arrays = result.arrays if result.arrays is not None and len(result.arrays) else initial_arrays
    final_arrays = as_model_dtypes(final_arrays, model_dtypes(initial_arrays))  # FedOpt keeps float64
    return FederationResult(rounds=rounds, final_arrays=final_arrays, flower_result=result)


def evaluated(server_round: int, num_rounds: int, eval_every: int) -> bool:
    """Whether round ``server_round`` (0 = the initial model) is evaluated centrally:
    round 0, every ``eval_every``-th round and the last round ``num_rounds``."""
    return server_round == 0 or server_round == num_rounds or server_round % eval_every == 0


def model_dtypes(arrays: ArrayRecord) -> dict[str, np.dtype]:
    """Each tensor's dtype in ``arrays`` (the initial model: what devices build)."""
    return {k: np.dtype(v.dtype) for k, v in arrays.items()}


def attach_client_metrics(rounds: list[RoundRecord], result: Result) -> None:
    """Fill each record's client-side metrics (train loss, federated accuracy) from ``result``."""
    for record in rounds:
        metrics = result.train_metrics_clientapp.get(record.round)
        if metrics is not None and "train_loss" in metrics:
            record.train_loss = float(cast(float, metrics["train_loss"]))
        evaluated = result.evaluate_metrics_clientapp.get(record.round)
        if evaluated is not None and "accuracy" in evaluated:
            record.federated_accuracy = float(cast(float, evaluated["accuracy"]))
