"""Checkpoint after every round, and resume from round k+1 after a crash.

Flower's ``Strategy.start`` always begins at round 1. :class:`CheckpointedRun` wraps
the strategy and replaces ``start`` with the same per-round steps (configure_train,
send_and_receive, aggregate_train, configure_evaluate, send_and_receive,
aggregate_evaluate, central evaluation) beginning after the checkpoint's round, and
writes a checkpoint when each round is done. :func:`run_resumable` drives it through
:func:`~fedge.server.federation.run_federation`, so the per-round records are built
by the same code as every other run: a resumed run's results are those of a run
that never stopped, rounds 1..k are neither repeated nor lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedge.server import strategy_state
from fedge.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, RoundRecord, attach_client_metrics, run_federation
from fedge.server.grid import FedgeGrid
from fedge.strategies.compressed import CompressionLog

log = logging.getLogger(__name__)

RESULT_FIELDS = ("train_metrics_clientapp", "evaluate_metrics_clientapp", "evaluate_metrics_serverapp")


class CheckpointedRun(Strategy):
    """``strategy`` with a ``start`` that checkpoints every round and can resume.

    Parameters
    ----------
    strategy:
        The strategy to run (e.g. a CompressedStrategy around a Flower strategy).
    directory:
        Where ``checkpoint.npz`` is written.
    config_fingerprint:
        Fingerprint of the experiment; a resume with another one is refused.
    resume_from:
        A loaded checkpoint to continue from, or ``None`` for a fresh run.
    """

    def __init__(
        self,
        strategy: Strategy,
        directory: str | Path,
        config_fingerprint: str,
        resume_from: Checkpoint | None = None,
    ) -> None:
        self.strategy = strategy
        self.directory = Path(directory)
        self.config_fingerprint = config_fingerprint
        self.resume_from = resume_from
        self.records: list[RoundRecord] = []  # every round's record, restored ones first
        if resume_from is not None:
            if resume_from.config_fingerprint != config_fingerprint:
                raise ValueError(
                    f"the checkpoint in {self.directory} belongs to a different experiment configuration; "
                    "resume with the configuration it was written with, or use another server.checkpoint_dir"
                )
            self.records = [RoundRecord(**r) for r in resume_from.records]

    # -- the driver ---------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        arrays = initial_arrays
        first = 1
        if self.resume_from is not None:
            arrays = self._restore(result)
            first = self.resume_from.round + 1
            log.info("resuming after round %d of %d", self.resume_from.round, num_rounds)
        elif evaluate_fn is not None:
            self._evaluate(0, arrays, evaluate_fn, result)
            self._save(0, arrays, result)
        for current in range(first, num_rounds + 1):
            replies = grid.send_and_receive(
                messages=self.strategy.configure_train(current, arrays, train_config, grid), timeout=timeout
            )
            new_arrays, train_metrics = self.strategy.aggregate_train(current, replies)
            if new_arrays is not None:
                result.arrays = arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[current] = train_metrics
            replies = grid.send_and_receive(
                messages=self.strategy.configure_evaluate(current, arrays, evaluate_config, grid), timeout=timeout
            )
            evaluate_metrics = self.strategy.aggregate_evaluate(current, replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[current] = evaluate_metrics
            if evaluate_fn is not None:
                self._evaluate(current, arrays, evaluate_fn, result)
            self._save(current, arrays, result)
        return result

    def record(self, record: RoundRecord) -> None:
        """``on_round`` hook for run_federation: keep the record for the checkpoint."""
        self.records.append(record)

    def _evaluate(self, server_round: int, arrays: ArrayRecord, evaluate_fn: Callable, result: Result) -> None:
        metrics = evaluate_fn(server_round, arrays)
        if metrics is not None:
            result.evaluate_metrics_serverapp[server_round] = metrics

    def _save(self, server_round: int, arrays: ArrayRecord, result: Result) -> None:
        attach_client_metrics(self.records, result)
        description, strategy_arrays = strategy_state.capture(self.strategy)
        python_random, numpy_random = Checkpoint.random_states()
        dropped_log = getattr(self.strategy, "log", None)
        checkpoint = Checkpoint(
            round=server_round,
            model={k: v.numpy() for k, v in arrays.items()},
            strategy=description,
            strategy_arrays=strategy_arrays,
            records=[asdict(r) for r in self.records],
            flower={name: _metric_dicts(getattr(result, name)) for name in RESULT_FIELDS},
            dropped=[asdict(d) for d in dropped_log.dropped] if dropped_log is not None else [],
            python_random=python_random,
            numpy_random=numpy_random,
            config_fingerprint=self.config_fingerprint,
        )
        path = save_checkpoint(self.directory, checkpoint)
        log.info("round %d checkpointed to %s", server_round, path)

    def _restore(self, result: Result) -> ArrayRecord:
        checkpoint = self.resume_from
        assert checkpoint is not None
        strategy_state.restore(self.strategy, checkpoint.strategy, checkpoint.strategy_arrays)
        checkpoint.restore_random()
        dropped_log = getattr(self.strategy, "log", None)
        if dropped_log is not None and checkpoint.dropped:
            from fedge.strategies.compressed import DroppedReply

            dropped_log.dropped = [DroppedReply(**d) for d in checkpoint.dropped]
        for name in RESULT_FIELDS:
            target = getattr(result, name)
            for server_round, metrics in checkpoint.flower.get(name, {}).items():
                target[int(server_round)] = MetricRecord(metrics)
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.model.items()})
        if checkpoint.round > 0:
            result.arrays = arrays
        return arrays

    # -- delegation ---------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

    def __getattr__(self, name: str) -> Any:
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)


def _metric_dicts(by_round: dict[int, MetricRecord]) -> dict[str, dict[str, Any]]:
    return {str(r): dict(m) for r, m in by_round.items()}


def run_resumable(
    strategy: Strategy,
    grid: FedgeGrid,
    initial_arrays: ArrayRecord,
    evaluator: CentralEvaluator,
    num_rounds: int,
    checkpoint_dir: str | Path,
    config_fingerprint: str,
    *,
    resume: bool = False,
    train_config: ConfigRecord | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    timeout_s: float = 3600.0,
    dropped_log: CompressionLog | None = None,
) -> FederationResult:
    """:func:`run_federation` with a checkpoint after every round; ``resume`` continues one."""
    checkpoint = load_checkpoint(checkpoint_dir) if resume else None
    run = CheckpointedRun(strategy, checkpoint_dir, config_fingerprint, checkpoint)
    restored = list(run.records)

    def hook(record: RoundRecord) -> None:
        run.record(record)
        if on_round is not None:
            on_round(record)

    outcome = run_federation(
        run, grid, initial_arrays, evaluator, num_rounds, train_config, hook, timeout_s, dropped_log=dropped_log
    )
    final_arrays = outcome.final_arrays
    if checkpoint is not None and outcome.flower_result.arrays is None:
        final_arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.model.items()})
    return FederationResult(rounds=restored + outcome.rounds, final_arrays=final_arrays, flower_result=outcome.flower_result)
