"""Checkpoint after every round, and resume from round k+1 after a crash.

Flower's ``Strategy.start`` runs rounds ``1..n`` and calls ``evaluate_fn`` after the
initial model and after every round. :class:`CheckpointedRun` wraps the strategy and
builds on that loop instead of copying it:

* a resumed run calls Flower's ``start`` for the ``n - k`` rounds left, starting from
  the checkpoint's model, and shifts the round number by ``k`` in every method it
  forwards (``configure_train(r)`` reaches the wrapped strategy as round ``k + r``);
* its ``evaluate_fn`` runs the caller's central evaluation with the true round number,
  then writes the checkpoint (the model, the strategy's state, the records, the random
  generators), and skips round 0 of a resumed run (evaluated before the crash);
* the Flower metrics of every round are kept, under their true round numbers, as the
  forwarded methods return them, so a checkpoint holds them without Flower's ``Result``.

:func:`run_resumable` drives it through :func:`~fedge.server.federation.run_federation`,
so the per-round records are built by the same code as every other run: a resumed run's
results are those of a run that never stopped, rounds 1..k are neither repeated nor lost.
A checkpoint that cannot be written (a full disk, ...) is logged and the federation goes
on with the previous checkpoints in place.
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
from fedge.server.checkpoint import DEFAULT_KEEP, Checkpoint, checkpoint_files, load_checkpoint, save_checkpoint
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, RoundRecord, attach_client_metrics, model_dtypes, run_federation
from fedge.server.grid import FedgeGrid
from fedge.strategies.compressed import CompressedStrategy, CompressionLog, as_model_dtypes

log = logging.getLogger(__name__)

RESULT_FIELDS = ("train_metrics_clientapp", "evaluate_metrics_clientapp", "evaluate_metrics_serverapp")


class CheckpointedRun(Strategy):
    """``strategy`` whose Flower ``start`` checkpoints every round and can resume.

    Parameters
    ----------
    strategy:
        The strategy to run (e.g. a CompressedStrategy around a Flower strategy).
    directory:
        Where ``checkpoint-<round>.npz`` files are written.
    config_fingerprint:
        Fingerprint of the experiment; a resume with another one is refused.
    resume_from:
        A loaded checkpoint to continue from, or ``None`` for a fresh run.
    keep:
        How many checkpoints to keep (the newest).
    """

    def __init__(
        self,
        strategy: Strategy,
        directory: str | Path,
        config_fingerprint: str,
        resume_from: Checkpoint | None = None,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        self.strategy = strategy
        self.directory = Path(directory)
        self.config_fingerprint = config_fingerprint
        self.resume_from = resume_from
        self.keep = keep
        self.offset = resume_from.round if resume_from is not None else 0  # rounds done before this process
        self.history = Result()  # Flower metrics by true round number
        self.records: list[RoundRecord] = []  # every round's record, restored ones first
        self.failed_saves: list[tuple[int, str]] = []  # (round, why) for checkpoints not written
        if resume_from is not None:
            if resume_from.config_fingerprint != config_fingerprint:
                raise ValueError(
                    f"the checkpoint in {self.directory} belongs to a different experiment configuration; "
                    "resume with the configuration it was written with, or use another server.checkpoint_dir"
                )
            self.records = [RoundRecord(**r) for r in resume_from.records]

    @property
    def log(self) -> CompressionLog | None:
        """The wrapped strategy's log of refused replies and abandoned rounds, if it keeps one."""
        return self.strategy.log if isinstance(self.strategy, CompressedStrategy) else None

    # -- the driver: Flower's loop, shifted by the rounds already done ------------
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
        arrays = initial_arrays
        if self.resume_from is not None:
            arrays = self._restore()
            log.info("resuming after round %d of %d", self.offset, num_rounds)
            self._set_aside_newer()

        def evaluate_and_checkpoint(server_round: int, current: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 and self.resume_from is not None:
                return None  # the checkpoint's model was evaluated before the crash
            true_round = server_round + self.offset
            metrics = evaluate_fn(true_round, current) if evaluate_fn is not None else None
            if metrics is not None:
                self.history.evaluate_metrics_serverapp[true_round] = metrics
            self._save(true_round, current)
            return metrics

        if num_rounds > self.offset:
            flower = super().start(
                grid, arrays, num_rounds - self.offset, timeout, train_config, evaluate_config, evaluate_and_checkpoint
            )
            if flower.arrays:  # empty when no round applied an aggregate
                self.history.arrays = flower.arrays
        return self.history

    def record(self, record: RoundRecord) -> None:
        """``on_round`` hook for run_federation: keep the record for the checkpoint."""
        self.records.append(record)

    def _save(self, server_round: int, arrays: ArrayRecord) -> None:
        attach_client_metrics(self.records, self.history)
        description, strategy_arrays = strategy_state.capture(self.strategy)
        python_random, numpy_random = Checkpoint.random_states()
        checkpoint = Checkpoint(
            round=server_round,
            model={k: v.numpy() for k, v in arrays.items()},
            strategy=description,
            strategy_arrays=strategy_arrays,
            records=[asdict(r) for r in self.records],
            flower={name: _metric_dicts(getattr(self.history, name)) for name in RESULT_FIELDS},
            log=self.log.to_dict() if self.log is not None else {},
            python_random=python_random,
            numpy_random=numpy_random,
            config_fingerprint=self.config_fingerprint,
        )
        try:
            path = save_checkpoint(self.directory, checkpoint, self.keep)
        except OSError as exc:  # a full disk, a lost mount: the federation is worth more than one checkpoint
            reason = f"{type(exc).__name__}: {exc}"
            self.failed_saves.append((server_round, reason))
            newest = checkpoint_files(self.directory)
            kept = f"round {newest[0][0]} ({newest[0][1]})" if newest else "none"
            log.error(
                "round %d: checkpoint NOT written (%s); newest checkpoint kept: %s; the federation continues",
                server_round, reason, kept,
            )
            return
        log.info("round %d checkpointed to %s", server_round, path)

    def _restore(self) -> ArrayRecord:
        checkpoint = self.resume_from
        assert checkpoint is not None
        strategy_state.restore(self.strategy, checkpoint.strategy, checkpoint.strategy_arrays)
        checkpoint.restore_random()
        if self.log is not None and checkpoint.log:
            restored = CompressionLog.from_dict(checkpoint.log)
            self.log.dropped, self.log.adjusted, self.log.abandoned = restored.dropped, restored.adjusted, restored.abandoned
        for name in RESULT_FIELDS:
            target = getattr(self.history, name)
            for server_round, metrics in checkpoint.flower.get(name, {}).items():
                target[int(server_round)] = MetricRecord(metrics)
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.model.items()})
        if checkpoint.round > 0:
            self.history.arrays = arrays
        return arrays

    def _set_aside_newer(self) -> None:
        """Rename the newer checkpoints the resume passed over (invalid) out of the rotation."""
        for server_round, path in checkpoint_files(self.directory):
            if server_round > self.offset:
                path.rename(path.with_name(path.name + ".rejected"))
                log.warning("set aside %s (not valid); resuming after round %d", path, self.offset)

    # -- forwarded to the wrapped strategy, with true round numbers ----------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        true_round = server_round + self.offset
        arrays, metrics = self.strategy.aggregate_train(true_round, replies)
        if metrics is not None:
            self.history.train_metrics_clientapp[true_round] = metrics
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        true_round = server_round + self.offset
        metrics = self.strategy.aggregate_evaluate(true_round, replies)
        if metrics is not None:
            self.history.evaluate_metrics_clientapp[true_round] = metrics
        return metrics

    def summary(self) -> None:
        self.strategy.summary()


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
    resume: bool | Checkpoint = False,
    keep: int = DEFAULT_KEEP,
    train_config: ConfigRecord | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    timeout_s: float = 3600.0,
    dropped_log: CompressionLog | None = None,
) -> FederationResult:
    """:func:`run_federation` with a checkpoint after every round.

    ``resume``: ``True`` continues from the newest valid checkpoint in ``checkpoint_dir``;
    a :class:`Checkpoint` (loaded at start, before devices join: ``load_checkpoint``)
    continues from that one.
    """
    if isinstance(resume, Checkpoint):
        checkpoint: Checkpoint | None = resume
    else:
        checkpoint = load_checkpoint(checkpoint_dir, config_fingerprint) if resume else None
    run = CheckpointedRun(strategy, checkpoint_dir, config_fingerprint, checkpoint, keep)
    restored = list(run.records)

    def hook(record: RoundRecord) -> None:
        run.record(record)
        if on_round is not None:
            on_round(record)

    outcome = run_federation(
        run, grid, initial_arrays, evaluator, num_rounds, train_config, hook, timeout_s,
        dropped_log=dropped_log if dropped_log is not None else run.log,
    )
    final_arrays = outcome.final_arrays
    if checkpoint is not None and not outcome.flower_result.arrays:
        final_arrays = as_model_dtypes(ArrayRecord({k: Array(v) for k, v in checkpoint.model.items()}), model_dtypes(initial_arrays))
    return FederationResult(rounds=restored + outcome.rounds, final_arrays=final_arrays, flower_result=outcome.flower_result)
