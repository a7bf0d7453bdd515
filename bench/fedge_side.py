"""The benchmark's fedge side: the federation on the ``local`` backend (LocalGrid).

Wired like ``fedge-sim`` (``simulations/experiment.py``): EdgeClients built from a
:class:`ClientRecipe` in ``num_workers`` pinned worker processes, Flower's FedAvg inside
:class:`CompressedStrategy` (fp32 both ways, the ``compression=none`` default) and
:func:`run_federation` with central evaluation each round; Flower's logger at ERROR, as
``fedge-sim`` sets it (``verbose=false``, its default), so Flower's strategy does not
print its seven lines per round.
"""

from __future__ import annotations

import logging
import random

import torch

from flwr.app import ConfigRecord

from bench.instrumented import InstrumentedCompressed, RunOutcome
from bench.settings import BenchSettings, client_partitions, fedavg_options, initial_arrays
from bench.timing import Timeline
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import run_federation
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.fork_server import start_fork_server
from fedge.simulations.local_grid import LocalGrid


def run_fedge(settings: BenchSettings, num_workers: int, threads_per_worker: int = 1) -> RunOutcome:
    """Run the federation on LocalGrid with ``num_workers`` worker processes.

    Clients train with ``threads_per_worker`` torch threads in each worker, or with
    this process's torch threads when ``num_workers=0``. The timeline starts before the task's data is loaded and the workers are spawned,
    and finishes after the workers have been shut down.
    """
    timeline = Timeline()
    task = settings.task()
    if num_workers:  # as fedge-sim does: the fork server imports the workers' modules while data loads
        start_fork_server([type(task).__module__])
    data = task.load()
    parts = client_partitions(settings, data.train.y)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, settings.train, settings.seed)
    recipe.use_data(data)  # as fedge-sim: small data travels to the workers, they do not load it again
    strategy = InstrumentedCompressed(**fedavg_options(settings))
    evaluator = CentralEvaluator(task, data.test, settings.seed)
    random.seed(settings.seed)  # Flower strategies sample clients with `random`
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # as fedge-sim (simulations/sim_app.py, verbose=false)
    try:
        with LocalGrid(recipe, num_workers, threads_per_worker) as grid:
            result = run_federation(
                strategy,
                grid,
                initial_arrays(settings),
                evaluator,
                settings.rounds,
                ConfigRecord(settings.train.to_config()),
                on_round=lambda record: timeline.round_done(record.round, record.accuracy),
            )
    finally:
        flwr_log.setLevel(level)
    timeline.finish()
    failed = strategy.failed_rounds(settings.sampled)
    if failed:
        raise RuntimeError(f"fedge local backend: rounds with failed clients (round: replies) {failed}")
    threads = threads_per_worker if num_workers else torch.get_num_threads()
    return RunOutcome(timeline, result.final_arrays, dict(strategy.tally.aggregate_s), float(threads))
