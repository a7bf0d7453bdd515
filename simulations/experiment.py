"""One-machine federations: :func:`run_experiment` runs a composed experiment config.

The command ``fedge-sim`` (:mod:`fedge.simulations.sim_cli`) runs ``conf/config.yaml`` (digits, 10 clients, Dirichlet 0.5, FedAvg,
20 rounds); any key can be overridden (``fedge-sim strategy=fedadam rounds=5``) and
swept (``fedge-sim -m strategy=fedavg,fedprox``). Each run writes ``results.json``
(per-round accuracy, loss, bytes, seconds) and ``final_model.npz`` to its Hydra
output directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord
from omegaconf import DictConfig
from rich.console import Console

from fedge.conf.secagg_setup import secagg_sections, secure_strategy
from fedge.conf.server_reference import attach_server_reference
from fedge.conf.build import (
    ConfigError,
    build_strategy,
    build_task,
    round_config,
    seed_everything,
    train_defaults,
)
from fedge.server.dashboards import also, open_dashboards
from fedge.conf.schema import AttackConfig
from fedge.server.evaluation import CentralEvaluator, Evaluate
from fedge.server.federation import FederationResult, RoundRecord, run_federation
from fedge.server.grid import FedgeGrid
from fedge.server.results import final_weights, robust_section, write_results
from fedge.simulations.backends import make_grid
from fedge.simulations.clients import ClientRecipe, assign_runtimes, node_id_of
from fedge.simulations.experiment_checks import check_experiment
from fedge.simulations import fork_server
from fedge.conf.modes import is_async
from fedge.simulations.async_run import AsyncRun, run_async
from fedge.simulations.devices.fleet import device_simulator, fleet_devices, fleet_profiles
from fedge.simulations.devices.simulator import DeviceTotals
from fedge.simulations.devices.trace import TracedDevice
from fedge.simulations.evaluation_process import EvaluationProcess, torch_free_server
from fedge.simulations.partition import partition_for
from fedge.simulations.progress import RoundProgress, print_outcome, summary_table
from fedge.simulations.experiment_checks import attack_settings
from fedge.simulations.attacks import choose_attackers
from fedge.strategies import CompressedStrategy
from fedge.strategies.privacy import privacy_ledger

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

    from fedge.conf.shaping import Shaping
    from fedge.tasks.base import FederatedTask, Split

log = logging.getLogger("fedge.sim")


@dataclass
class SimulationOutcome:
    """A finished run: its metrics, final weights and where they were written."""

    result: FederationResult
    final_weights: dict[str, np.ndarray]
    results_path: Path | None


def run_experiment(
    cfg: DictConfig, out_dir: Path | None = None, console: Console | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SimulationOutcome:
    """Run the experiment ``cfg`` describes; write results into ``out_dir`` if given;
    call ``on_round`` with each round's record (an async run's: each aggregation step's).

    Where :func:`~fedge.simulations.evaluation_process.torch_free_server` allows (the
    default run), the initial model and central evaluation live in a child process
    forked by the workers' fork server, and this process never imports torch."""
    check_experiment(cfg)
    fork_server.start_for(cfg)  # workers import while data loads (fedge-sim started it earlier: no-op)
    base_task, data, digest = build_task(cfg)  # refuses a load() that is not deterministic
    # model shaping (shape=...): checkpoint, factorisation, pruning schedule, teacher; builds the model here (torch)
    shaping = None if torch_free_server(cfg) else _shape(cfg, base_task)
    if shaping is not None and shaping.trainable:  # a frozen backbone: only the new head trains and travels
        cfg.client.trainable = shaping.trainable
    train_cfg = train_defaults(cfg)
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    seed_everything(cfg.seed, with_torch=shaping is not None)  # Flower strategies sample clients with `random`

    task = shaping.task if shaping is not None else base_task
    if "num_partitions" in cfg.partition and cfg.partition.num_partitions != cfg.num_clients:
        raise ConfigError(f"partition.num_partitions must equal num_clients ({cfg.num_clients})")
    parts = partition_for(cfg.partition, data.train.y, data.groups)  # IID, Dirichlet: numpy, no flwr-datasets
    if len(parts) != cfg.num_clients:  # natural ids decide the number of clients
        raise ConfigError(f"partition gives {len(parts)} clients (one per natural id); set num_clients={len(parts)}")
    compressed = build_strategy(cfg, max(len(p) for p in parts))  # num-examples cap: the largest partition
    attach_server_reference(compressed, task, data.train, train_cfg, cfg.seed)  # FLTrust's root dataset; others: nothing
    secure = secure_strategy(cfg, compressed)
    strategy: Strategy = shaping.wrap(secure) if shaping is not None else secure
    node_parts = {node_id_of(i): p for i, p in enumerate(parts)}
    try:
        fleet = fleet_devices(cfg.device, list(node_parts), cfg.seed)
        profiles = fleet_profiles(cfg.device, list(node_parts), cfg.seed)
        traced = {node: d for node, d in fleet.items() if isinstance(d, TracedDevice)}
        devices = None if is_async(cfg) else device_simulator(cfg, profiles, traced)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    memory = {node: p.memory_mb for node, p in profiles.items()}
    runtimes = assign_runtimes(train_cfg, list(node_parts), cfg.seed)
    attack = attack_settings(cfg)
    attackers = choose_attackers(list(node_parts), attack, cfg.seed)
    recipe = ClientRecipe(
        task, node_parts, train_cfg, cfg.seed, memory_mb=memory, runtimes=runtimes, data_digest=digest,
        attack=attack, attackers=frozenset(attackers),
    )
    recipe.use_data(data)  # small data travels to the workers: they do not load it again
    train_config = round_config(train_cfg)

    ledger = privacy_ledger(secure, cfg.num_clients, cfg.dp_delta)  # epsilon per round of a DP run
    console = console or Console()
    async_run: AsyncRun | None = None
    with ExitStack() as stack:
        central = _central_evaluation(cfg, task, data.test, attack, float(data.train.x.max()), shaping, stack)
        try:
            grid = make_grid(cfg, recipe, compressed)  # the gRPC server needs the codecs, whatever wraps them
        except (ValueError, ImportError) as exc:
            raise ConfigError(f"backend: {exc}") from None
        grid.observe_deliveries(devices)
        initial = central.initial()  # the workers start meanwhile
        evaluator = central.evaluate
        with grid, open_dashboards(cfg, out_dir) as dashboards:  # logger=tensorboard / mlflow; none: nothing
            with RoundProgress(cfg.rounds, enabled=cfg.progress, console=console) as progress:
                hooks = also(on_round, also(progress, dashboards))
                if is_async(cfg):  # FedBuff on the simulated fleet (fedge.simulations.async_run)
                    assert isinstance(evaluator, CentralEvaluator)  # torch_free_server() is False for async runs
                    async_run = run_async(
                        cfg, compressed, grid, fleet, initial, evaluator, train_config, on_step=hooks
                    )
                    result: FederationResult = async_run.result
                else:
                    result = run_federation(
                        strategy, grid, initial, evaluator, cfg.rounds, train_config, on_round=hooks,
                        dropped_log=compressed.log, privacy=ledger, eval_every=cfg.get("eval_every", 1),
                    )
            dashboards.finish(result)
    weights = final_weights(result)

    results_path = None
    if out_dir is not None:
        sections: dict[str, object] = dict(secagg_sections(secure))
        if shaping is not None and shaping.report:
            sections["shape"] = shaping.report
        if ledger is not None:
            sections["privacy"] = ledger.report(cfg.rounds)
        if async_run is not None:
            sections["async"] = async_run.section
        totals = async_run.fleet.totals if async_run is not None else devices.totals if devices is not None else None
        sections.update(robustness_sections(attack, attackers, central.backdoor_success, compressed))
        results_path = write_results(
            out_dir, cfg, result, compressed.log, grid.transport_report(), _client_totals(grid, totals), sections
        )
    if cfg.progress:
        console.print(summary_table(f"{type(task).__name__} / {cfg.strategy._target_.rsplit('.', 1)[-1]} / {cfg.compression.name}", result.rounds))
    print_outcome(console, result.final_accuracy, results_path)
    return SimulationOutcome(result, weights, results_path)


def _shape(cfg: DictConfig, task: FederatedTask) -> Shaping:
    from fedge.conf.shaping import shape_experiment  # torch: only where the server builds the model

    return shape_experiment(cfg, task)


@dataclass
class CentralEvaluation:
    """Where a run's initial model comes from and how it is evaluated centrally."""

    initial: Callable[[], ArrayRecord]
    evaluate: Evaluate
    backdoor_success: list[float] | None = field(default=None)  # per evaluation, round 0 first (attack=backdoor)


def _central_evaluation(
    cfg: DictConfig, task: FederatedTask, test: Split, attack: AttackConfig, brightest: float, shaping: Shaping | None,
    stack: ExitStack,
) -> CentralEvaluation:
    """The run's initial model and central evaluator: in a child process forked by the fork
    server when ``shaping`` is None (:func:`torch_free_server`), else in this process."""
    if shaping is None:
        process = stack.enter_context(EvaluationProcess(task, test, cfg.seed))
        return CentralEvaluation(lambda: ArrayRecord({k: Array(v) for k, v in process.initial_weights().items()}), process)
    initial = ArrayRecord(shaping.initial)  # drawn after torch.manual_seed(cfg.seed) in shaping
    if attack.name == "backdoor":
        from fedge.simulations.backdoor import BackdoorEvaluator

        backdoor = BackdoorEvaluator(task, test, attack, brightest, cfg.seed)
        return CentralEvaluation(lambda: initial, backdoor, backdoor.success_rates)
    return CentralEvaluation(lambda: initial, CentralEvaluator(task, test, cfg.seed, rebuild=shaping.rebuild))


def robustness_sections(
    attack: AttackConfig, attackers: list[int], backdoor_success: list[float] | None, compressed: CompressedStrategy
) -> dict[str, object]:
    """results.json's ``attack`` (who attacked; backdoor success per round) and ``robust``
    (each device's update clipped or excluded by a robust rule, per round, and why)."""
    sections: dict[str, object] = {}
    if attack.active:
        entry: dict[str, object] = {**asdict(attack), "attackers": attackers}
        if backdoor_success is not None:
            entry["backdoor_success"] = backdoor_success  # per evaluation, round 0 first
        sections["attack"] = entry
    sections.update(robust_section(compressed))
    return sections


def _client_totals(grid: FedgeGrid, devices: Mapping[int, DeviceTotals] | None) -> dict[str, dict]:
    """Per-client bytes and compute seconds, with simulated device totals when profiled."""
    clients = {node: asdict(t) for node, t in grid.traffic.nodes().items()}
    if devices is not None:
        for node, totals in devices.items():
            clients.setdefault(node, {}).update(asdict(totals))
    return {str(node): clients[node] for node in sorted(clients)}
