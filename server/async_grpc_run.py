"""``fedge-server mode=async``: FedBuff over real devices (gRPC), checkpointed as it goes.

:func:`run_async_grpc` wires the run's CompressedStrategy into a
:class:`~fedge.strategies.fedbuff.FedBuffAggregator`, the
:class:`~fedge.server.async_grpc_grid.AsyncGrpcGrid` into a
:class:`~fedge.server.async_grpc_fleet.GrpcFleet` and runs
:func:`~fedge.server.async_driver.run_async_federation`: every device that is free gets
the newest model (with its dispatch id as the Task's ``server_round``), every
``mode.buffer_size`` accepted pushes make one aggregation step, ``rounds`` steps in all.
Before each wait an :class:`~fedge.server.async_grpc_checkpoint.AsyncCheckpointer`
saves what changed; ``--resume`` restores the model version, the buffer, the inner
strategy's state and the tasks in flight (offered again under their ids).

``results.json`` gets the ``async`` section of :meth:`AsyncFederationResult.async_report`
over the whole run (steps before a restart included), plus ``updates_by_node``: per
device the updates it pushed that were taken into the buffer (``accepted``) and those
applied in a step (``applied``), the measure of who contributed what.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord

from fedge.conf.build import ConfigError
from fedge.conf.schema import ModeConfig, ServerConfig
from fedge.server.async_driver import AsyncFederationResult, AsyncStepRecord, run_async_federation
from fedge.server.async_grpc_checkpoint import AsyncCheckpointer, AsyncHistory, restore_async
from fedge.server.async_grpc_fleet import GrpcFleet
from fedge.server.async_grpc_grid import AsyncGrpcGrid
from fedge.server.checkpoint import Checkpoint
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import RoundRecord
from fedge.strategies.compressed import CompressedStrategy
from fedge.strategies.fedbuff import FedBuffAggregator

log = logging.getLogger(__name__)


@dataclass
class AsyncGrpcRun:
    """A finished async run over gRPC: the combined result and its results.json section."""

    result: AsyncFederationResult
    aggregator: FedBuffAggregator
    section: dict[str, Any]
    unfinished_nodes: set[int]  # devices whose task the end withdrew (still training, or to rejoin)


def run_async_grpc(
    mode: ModeConfig,
    compressed: CompressedStrategy,
    grid: AsyncGrpcGrid,
    initial: ArrayRecord,
    evaluator: CentralEvaluator,
    train_config: ConfigRecord,
    settings: ServerConfig,
    steps: int,
    seed: int,
    config_fingerprint: str,
    checkpoint: Checkpoint | None = None,
    on_step: Callable[[RoundRecord], None] | None = None,
) -> AsyncGrpcRun:
    """Run ``steps`` FedBuff steps over the devices joined to ``grid`` (resume from ``checkpoint``)."""
    node_ids = grid.get_node_ids()
    try:
        if checkpoint is not None:
            aggregator, history = restore_async(checkpoint, compressed, mode, train_config, node_ids)
            grid.repost(history.open_tasks)
            state = aggregator.state
            print(f"resuming async run at model version {state.version}: {len(state.buffer)} buffered updates, "
                  f"{len(history.open_tasks)} tasks in flight offered again, step {len(aggregator.log.steps)} of {steps}",
                  flush=True)
        else:
            aggregator = FedBuffAggregator(compressed, mode, initial, train_config, node_ids)
            history = AsyncHistory()
    except ValueError as exc:  # CheckpointError is one; a strategy FedBuff cannot use
        raise ConfigError(str(exc)) from None
    checkpointer = AsyncCheckpointer(
        settings.checkpoint_dir, config_fingerprint, aggregator, grid, history, settings.keep_checkpoints
    )
    fleet = GrpcFleet(grid, aggregator.state.clock_s, before_wait=checkpointer.save_if_changed)
    resumed = checkpoint is not None

    def step_done(record: RoundRecord) -> None:
        if record.round == 0 and resumed:
            return  # the initial model was evaluated before the restart
        history.rounds.append(record)
        if on_step is not None:
            on_step(record)

    def step_recorded(record: AsyncStepRecord) -> None:
        history.steps.append(record)

    outcome = run_async_federation(
        aggregator, fleet, evaluator, steps, seed=seed, traffic=grid.traffic, on_step=step_done,
        stop_accuracy=mode.stop_accuracy, on_record=step_recorded,
    )
    checkpointer.save_if_changed()
    unfinished = grid.busy_node_ids()
    grid.cancel(list(grid.open_message_ids()))
    result = AsyncFederationResult(
        rounds=history.rounds, final_arrays=outcome.final_arrays, flower_result=outcome.flower_result,
        steps=history.steps, arrivals=list(aggregator.log.arrivals), stopped=outcome.stopped,
        in_flight_at_end=outcome.in_flight_at_end, buffered_at_end=outcome.buffered_at_end,
    )
    section = result.async_report(aggregator)
    section["updates_by_node"] = updates_by_node(aggregator)
    if history.resumed:  # the restart: what it restored, and which re-offered tasks were answered after it
        reoffered = set(history.resumed["reoffered_dispatches"])
        kept = [a.dispatch for a in aggregator.log.arrivals if a.kept and a.dispatch in reoffered]
        section["resumed"] = {**history.resumed, "reoffered_accepted": kept}
    section["checkpoints_written"] = history.saves
    section["failed_checkpoints"] = list(checkpointer.failed_saves)
    return AsyncGrpcRun(result, aggregator, section, unfinished)


def updates_by_node(aggregator: FedBuffAggregator) -> dict[str, dict[str, int]]:
    """Per node: updates taken into the buffer (``accepted``) and applied in a step (``applied``)."""
    accepted = Counter(a.node_id for a in aggregator.log.arrivals if a.kept)
    applied = Counter(n for step in aggregator.log.steps for n in step.nodes)
    nodes = sorted(set(accepted) | set(applied))
    return {str(n): {"accepted": accepted[n], "applied": applied[n]} for n in nodes}
