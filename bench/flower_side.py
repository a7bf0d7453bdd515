"""The benchmark's Flower side: the same federation on Flower's simulation runtime.

A Flower 1.41 Message-API app: a :class:`ClientApp` whose ``@app.train()`` function
trains with fedge's own :func:`fedge.client.training.train` (same mini-batch SGD, same
per-client, per-round seeds as :class:`fedge.client.EdgeClient`), and a
:class:`ServerApp` whose ``@app.main()`` runs ``FedAvg.start`` with the same central
evaluation, launched with ``flwr.simulation.run_simulation`` on the Ray backend. Only
the runtime differs from the fedge side.

Each Ray actor process loads the task's data and builds the partition once and keeps
one model to train in (the usual Flower pattern: data cached per actor), so Flower is
measured at its best.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result
from flwr.simulation import run_simulation
from torch import nn

from bench.instrumented import InstrumentedFedAvg, RunOutcome
from bench.settings import BenchSettings, client_partitions, fedavg_options, initial_arrays
from bench.timing import Timeline
from fedge.client.training import train
from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.clients import node_id_of
from fedge.tasks.base import FederatedTask, Split

#: Node-config key under which Flower's simulation gives each node its partition.
PARTITION_ID_KEY = "partition-id"


@dataclass
class _ActorData:
    """What one Ray actor process keeps across messages: data, partition, a model."""

    task: FederatedTask
    train_pool: Split
    partitions: list[np.ndarray]
    model: nn.Module


_ACTOR_DATA: dict[tuple[object, ...], _ActorData] = {}


def _actor_data(settings: BenchSettings) -> _ActorData:
    key = (settings.num_clients, settings.partition, settings.alpha, settings.seed)
    if key not in _ACTOR_DATA:
        task = settings.task()
        pool = task.load().train
        _ACTOR_DATA[key] = _ActorData(task, pool, client_partitions(settings, pool.y), task.build_model())
    return _ACTOR_DATA[key]


def train_reply(settings: BenchSettings, msg: Message, context: Context) -> Message:
    """Train this node's partition from the message's global model; reply with weights.

    Seeds exactly as :class:`fedge.client.EdgeClient` does for node
    ``node_id_of(partition)``, so both runtimes take the same SGD steps.
    """
    partition = int(context.node_config[PARTITION_ID_KEY])
    actor = _actor_data(settings)
    data = actor.train_pool.subset(actor.partitions[partition])
    config = msg.content["config"]
    cfg = settings.train.updated_from(config)
    actor.model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
    rng = np.random.default_rng([settings.seed, node_id_of(partition), int(config["server-round"])])
    torch.default_generator.manual_seed(int(rng.integers(2**31)))  # as fedge's TorchTrainer.train
    stats = train(actor.model, actor.task, data, cfg, rng)
    metrics = MetricRecord(
        {"num-examples": stats.num_examples, "train_loss": stats.mean_loss, "torch_threads": torch.get_num_threads()}
    )
    return Message(RecordDict({"arrays": ArrayRecord(actor.model.state_dict()), "metrics": metrics}), reply_to=msg)


def build_client_app(settings: BenchSettings) -> ClientApp:
    """The ClientApp (pickled to the Ray actors; it carries only ``settings``)."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_reply(settings, msg, context)

    return app


def build_server_app(
    settings: BenchSettings, timeline: Timeline, strategy: InstrumentedFedAvg, results: list[Result]
) -> ServerApp:
    """The ServerApp: ``strategy`` over all clients, central evaluation stamping ``timeline``.

    It runs in a thread of this process, so it hands its :class:`Result` back in ``results``.
    """
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        task = settings.task()
        evaluator = CentralEvaluator(task, task.load().test, settings.seed)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            loss, accuracy = evaluator(arrays)
            timeline.round_done(server_round, accuracy)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        random.seed(settings.seed)
        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(settings),
            num_rounds=settings.rounds,
            train_config=ConfigRecord(settings.train.to_config()),
            evaluate_fn=evaluate_fn,
        )
        results.append(result)

    return app


def run_flower(settings: BenchSettings, cpus_per_client: float, total_cpus: int) -> RunOutcome:
    """Run the federation under ``run_simulation`` on Ray (``total_cpus`` CPUs).

    ``cpus_per_client`` is each Ray actor's ``num_cpus`` (so ``total_cpus /
    cpus_per_client`` actors train at once). The timeline starts before Ray is
    initialised and finishes after Flower has shut it down.
    """
    strategy = InstrumentedFedAvg(**fedavg_options(settings))
    results: list[Result] = []
    timeline = Timeline()
    run_simulation(
        server_app=build_server_app(settings, timeline, strategy, results),
        client_app=build_client_app(settings),
        num_supernodes=settings.num_clients,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": total_cpus, "logging_level": logging.ERROR},
        },
    )
    timeline.finish()
    if not results or results[0].arrays is None or len(timeline.round_ends) != settings.rounds + 1:
        raise RuntimeError("Flower's simulation ended without finishing every round (see its log above)")
    failed = strategy.tally.failed_rounds(settings.sampled)
    if failed:
        raise RuntimeError(f"Flower simulation: rounds with failed clients (round: replies) {failed}")
    last = results[0].train_metrics_clientapp.get(settings.rounds)
    threads = float(last["torch_threads"]) if last is not None else None
    return RunOutcome(timeline, results[0].arrays, dict(strategy.tally.aggregate_s), threads)
