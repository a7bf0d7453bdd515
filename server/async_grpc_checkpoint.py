"""Checkpoints of an asynchronous (FedBuff) federation over gRPC, and its resume.

A synchronous run checkpoints after every round (:mod:`fedge.server.resume`). An async
run has no rounds: updates arrive one by one and sit in the buffer until ``K`` are
there. So :class:`AsyncCheckpointer` writes a checkpoint whenever something changed
(an arrival taken into the buffer or dropped, an aggregation step, a task launched),
at the driver's safe point (just before it waits for the next completion:
:class:`~fedge.server.async_grpc_fleet.GrpcFleet`'s ``before_wait``). Each holds:

* the aggregator's state and log (:meth:`FedBuffAggregator.checkpoint`): model
  version and weights, the buffered updates (decoded deltas, staleness, weights,
  metrics), the dispatches in flight and what each device decoded;
* the inner Flower strategy's own state (FedAdam's moments, ...:
  :mod:`fedge.server.strategy_state`) and the CompressedStrategy's log;
* the tasks open on the grid, byte for byte (:meth:`AsyncGrpcGrid.open_dispatches`):
  the restarted server offers them again under the same task ids, so an update a
  device computed while the server was down is pushed again and accepted;
* the per-step records so far (results.json's rounds and ``async.steps``).

It uses the synchronous checkpoint's file format (:mod:`fedge.server.checkpoint`:
atomic replace, digest, newest ``keep`` kept) with the ``extra`` part; the file number
counts saves. A kill -9 at any moment leaves the last complete checkpoint: what it
stored is never lost, and what happened after it is at most the arrivals and launches
since the last wait. Writing costs one model plus ``K`` deltas per arrival: for large
models raise ``server.keep_checkpoints`` only as disk allows.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord

from fedge.protos.v1 import task_pb2
from fedge.server import strategy_state
from fedge.server.async_driver import AsyncStepRecord
from fedge.server.async_grpc_grid import AsyncGrpcGrid, OpenTask
from fedge.server.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from fedge.server.federation import RoundRecord
from fedge.strategies.compressed import CompressedStrategy, CompressionLog
from fedge.strategies.fedbuff import FedBuffAggregator
from fedge.strategies.fedbuff_config import FedBuffConfig

log = logging.getLogger(__name__)

#: ``Checkpoint.extra["mode"]`` of an asynchronous run.
ASYNC_MODE = "async"


@dataclass
class AsyncHistory:
    """What the driver recorded before this process: per-step records, and tasks in flight."""

    rounds: list[RoundRecord] = field(default_factory=list)  # round 0 (initial model) and one per step
    steps: list[AsyncStepRecord] = field(default_factory=list)
    open_tasks: list[OpenTask] = field(default_factory=list)
    saves: int = 0  # checkpoints written so far (the file number)
    resumed: dict[str, Any] = field(default_factory=dict)  # what the last resume restored (empty: never resumed)


class AsyncCheckpointer:
    """Write a checkpoint of ``aggregator`` (and the grid's open tasks) when it changed."""

    def __init__(
        self,
        directory: str | Path,
        config_fingerprint: str,
        aggregator: FedBuffAggregator,
        grid: AsyncGrpcGrid,
        history: AsyncHistory,
        keep: int,
    ) -> None:
        self.directory = Path(directory)
        self.config_fingerprint = config_fingerprint
        self.aggregator = aggregator
        self.grid = grid
        self.history = history
        self.keep = keep
        self._saved: tuple[int, int, int] | None = None
        self.failed_saves: list[str] = []

    def _marker(self) -> tuple[int, int, int]:
        agg = self.aggregator
        return len(agg.log.arrivals), len(agg.log.steps), agg.state.next_dispatch

    def save_if_changed(self) -> None:
        if self._marker() != self._saved:
            self.save()

    def save(self) -> None:
        """Write a checkpoint now; a failure (full disk) is logged and the run goes on."""
        agg, history = self.aggregator, self.history
        description, arrays = agg.checkpoint()
        strategy, strategy_arrays = strategy_state.capture(agg.compressed.strategy)
        open_tasks = self.grid.open_dispatches()
        extra_arrays = {f"agg/{k}": v for k, v in arrays.items()}
        extra_arrays.update({f"task/{t.task_id}": np.frombuffer(t.payload, dtype=np.uint8) for t in open_tasks})
        extra = {
            "mode": ASYNC_MODE,
            "aggregator": description,
            "open_tasks": [{"node_id": t.node_id, "task_id": t.task_id, "message_type": t.message_type} for t in open_tasks],
            "steps": [asdict(s) for s in history.steps],
            "nodes": list(agg.node_ids),  # the fleet: a resume need not wait for every device to rejoin
        }
        saves = history.saves + 1
        python_random, numpy_random = Checkpoint.random_states()
        checkpoint = Checkpoint(
            round=saves,
            model=dict(agg.state.model),
            strategy=strategy,
            strategy_arrays=strategy_arrays,
            records=[asdict(r) for r in history.rounds],
            flower={},
            log=agg.compressed.log.to_dict(),
            python_random=python_random,
            numpy_random=numpy_random,
            config_fingerprint=self.config_fingerprint,
            extra=extra,
            extra_arrays=extra_arrays,
        )
        try:
            save_checkpoint(self.directory, checkpoint, self.keep)
        except OSError as exc:
            self.failed_saves.append(f"{type(exc).__name__}: {exc}")
            log.error("async checkpoint NOT written (%s); the federation continues", exc)
            return
        history.saves = saves
        self._saved = self._marker()
        log.debug("async checkpoint %d: version %d, %d buffered, %d in flight", saves, agg.version,
                  len(agg.state.buffer), len(agg.state.inflight))


def restore_async(
    checkpoint: Checkpoint,
    compressed: CompressedStrategy,
    config: FedBuffConfig,
    train_config: ConfigRecord,
    node_ids: list[int],
) -> tuple[FedBuffAggregator, AsyncHistory]:
    """The aggregator and history a checkpoint of an async run holds (:class:`CheckpointError` if it is not one).

    ``node_ids``: the devices connected now; the fleet is those and the checkpoint's.
    """
    extra = checkpoint.extra
    if extra.get("mode") != ASYNC_MODE:
        raise CheckpointError("the checkpoint is of a synchronous run; it cannot resume mode=async")
    try:
        strategy_state.restore(compressed.strategy, checkpoint.strategy, checkpoint.strategy_arrays)
        restored = CompressionLog.from_dict(checkpoint.log)
        compressed.log.dropped, compressed.log.adjusted, compressed.log.abandoned = (
            restored.dropped, restored.adjusted, restored.abandoned,
        )
        agg_arrays = {k[len("agg/"):]: v for k, v in checkpoint.extra_arrays.items() if k.startswith("agg/")}
        fleet = sorted(set(node_ids) | {int(n) for n in extra["nodes"]})
        aggregator = FedBuffAggregator.restore(compressed, config, train_config, fleet, extra["aggregator"], agg_arrays)
        open_tasks = [
            OpenTask(int(t["node_id"]), str(t["task_id"]), str(t["message_type"]),
                     checkpoint.extra_arrays[f"task/{t['task_id']}"].tobytes())
            for t in extra["open_tasks"]
        ]
        history = AsyncHistory(
            rounds=[RoundRecord(**r) for r in checkpoint.records],
            steps=[AsyncStepRecord(**s) for s in extra["steps"]],
            open_tasks=open_tasks,
            saves=checkpoint.round,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the async checkpoint does not restore: {type(exc).__name__}: {exc}") from None
    # a task the grid kept must be one the aggregator still expects, and the other way round:
    # a dispatch with no kept task can never be answered, so it is recorded as lost now
    inflight = set(aggregator.state.inflight)
    history.open_tasks = [t for t in history.open_tasks if _dispatch_of(t) in inflight]
    reoffered = sorted(_dispatch_of(t) for t in history.open_tasks)
    for dispatch in sorted(inflight - set(reoffered)):
        aggregator.receive(dispatch, None, "its task was not kept over the server restart", aggregator.state.clock_s)
    state = aggregator.state
    history.resumed = {
        "checkpoint": checkpoint.round, "version": state.version, "buffered": len(state.buffer),
        "steps": len(aggregator.log.steps), "reoffered_dispatches": reoffered,
    }
    return aggregator, history


def _dispatch_of(task: OpenTask) -> int:
    return task_pb2.Task.FromString(task.payload).server_round


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    """Model version, buffered updates and tasks in flight a checkpoint holds (for logs and tests)."""
    state = checkpoint.extra.get("aggregator", {}).get("state", {})
    return {
        "version": state.get("version"),
        "buffered": len(state.get("buffer", [])),
        "in_flight": len(state.get("inflight", {})),
        "open_tasks": len(checkpoint.extra.get("open_tasks", [])),
        "steps": len(checkpoint.extra.get("steps", [])),
    }
