"""``fedge-sim``: the Hydra entry point for one-machine federations.

``fedge-sim`` runs ``conf/config.yaml`` (digits, 10 clients, Dirichlet 0.5, FedAvg,
20 rounds); any key can be overridden (``fedge-sim strategy=fedadam rounds=5``) and
swept (``fedge-sim -m strategy=fedavg,fedprox``). Each run writes ``results.json``
(per-round accuracy, loss, bytes, seconds) and ``final_model.npz`` to its Hydra
output directory.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from fedge.client.config import TrainConfig
from fedge.client.qat import final_steps
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, run_federation
from fedge.simulations.clients import ClientRecipe, assign_runtimes, node_id_of
from fedge.simulations.backends import BACKENDS, make_grid
from fedge.simulations.compression import compression_setup
from fedge.simulations.config import register_configs
from fedge.simulations.devices import device_simulator, fleet_profiles
from fedge.simulations.partition import partition_indices
from fedge.simulations.progress import RoundProgress, summary_table
from fedge.simulations.report import make_report
from fedge.strategies import CompressedStrategy
from fedge.tasks.base import FederatedTask

log = logging.getLogger("fedge.sim")


class ConfigError(ValueError):
    """A configuration that type-checks but cannot run; the message names the key."""


@dataclass
class SimulationOutcome:
    """A finished run: its metrics, final weights and where they were written."""

    result: FederationResult
    final_weights: dict[str, np.ndarray]
    results_path: Path | None


def _build(kind: str, node: DictConfig, **kwargs: object) -> object:
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # hydra wraps the constructor's error; show its cause
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build {kind} from {OmegaConf.to_container(node)}: {cause}") from None


def _check(cfg: DictConfig) -> TrainConfig:
    if cfg.num_clients < 2:
        raise ConfigError(f"num_clients must be >= 2, got {cfg.num_clients}")
    if cfg.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg.rounds}")
    if cfg.backend.name not in BACKENDS:
        raise ConfigError(f"backend.name {cfg.backend.name!r} is not one of {BACKENDS}")
    try:
        return TrainConfig(**OmegaConf.to_container(cfg.client))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"client: {exc}") from None


def build_strategy(cfg: DictConfig) -> CompressedStrategy:
    """The configured Flower strategy wrapped by CompressedStrategy with the configured codecs."""
    try:
        setup = compression_setup(OmegaConf.to_container(cfg.compression))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"compression: {exc}") from None
    inner = _build("strategy", cfg.strategy)
    return CompressedStrategy(
        inner,  # type: ignore[arg-type]
        uplink=setup.uplink,
        downlink=setup.downlink,
        downlink_delta=setup.downlink_delta,
        max_update_bytes=setup.max_update_bytes,
        freeze=list(cfg.client.freeze),  # partial updates: frozen tensors are never sent
        trainable=list(cfg.client.trainable),
    )


def run_experiment(cfg: DictConfig, out_dir: Path | None = None, console: Console | None = None) -> SimulationOutcome:
    """Run the experiment ``cfg`` describes; write results into ``out_dir`` if given."""
    train_cfg = _check(cfg)
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    random.seed(cfg.seed)  # Flower strategies sample clients with `random`
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    task: FederatedTask = _build("task", cfg.task)  # type: ignore[assignment]
    data = task.load()
    partitioner = _build("partition", cfg.partition)
    if getattr(partitioner, "num_partitions", cfg.num_clients) != cfg.num_clients:
        raise ConfigError(f"partition.num_partitions must equal num_clients ({cfg.num_clients})")
    try:
        parts = partition_indices(data.train.y, partitioner, data.groups)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"partition: {exc}") from None
    if len(parts) != cfg.num_clients:  # natural ids decide the number of clients
        raise ConfigError(f"partition gives {len(parts)} clients (one per natural id); set num_clients={len(parts)}")
    strategy = build_strategy(cfg)
    node_parts = {node_id_of(i): p for i, p in enumerate(parts)}
    try:
        profiles = fleet_profiles(cfg.device, list(node_parts), cfg.seed)
        devices = device_simulator(cfg, profiles)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    memory = {node: p.memory_mb for node, p in profiles.items()}
    runtimes = assign_runtimes(train_cfg, list(node_parts), cfg.seed)
    recipe = ClientRecipe(task, node_parts, train_cfg, cfg.seed, memory_mb=memory, runtimes=runtimes)
    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(task.build_model().state_dict())
    evaluator = CentralEvaluator(task, data.test, cfg.seed)
    train_config = ConfigRecord(train_cfg.to_config())

    console = console or Console()
    try:
        grid = make_grid(cfg, recipe, strategy)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"backend: {exc}") from None
    grid.simulate_devices(devices)
    with grid:
        with RoundProgress(cfg.rounds, enabled=cfg.progress, console=console) as progress:
            result = run_federation(strategy, grid, initial, evaluator, cfg.rounds, train_config, on_round=progress)
    weights = {k: v.numpy() for k, v in result.final_arrays.items()}

    results_path = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / "results.json"
        payload = {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "final": asdict(result.final),
            "rounds": [asdict(r) for r in result.rounds],
            "dropped_replies": [asdict(d) for d in strategy.log.dropped],
            **(grid.transport_report() if hasattr(grid, "transport_report") else {}),
            "clients": _client_totals(grid),
            "qat": final_steps(result.flower_result.train_metrics_clientapp),  # LSQ steps for fedge-export
        }
        results_path.write_text(json.dumps(payload, indent=2))
        np.savez(out_dir / "final_model.npz", **weights)
    if cfg.progress:
        console.print(summary_table(f"{cfg.task._target_.rsplit('.', 1)[-1]} / {cfg.strategy._target_.rsplit('.', 1)[-1]} / {cfg.compression.name}", result.rounds))
    console.print(f"final accuracy: {result.final.accuracy:.4f}" + (f"  (results: {results_path})" if results_path else ""))
    return SimulationOutcome(result, weights, results_path)


def _client_totals(grid: object) -> dict[str, dict]:
    """Per-client bytes and compute seconds, with simulated device totals when profiled."""
    clients = {node: asdict(t) for node, t in grid.traffic.nodes().items()}  # type: ignore[attr-defined]
    devices = getattr(grid, "devices", None)
    if devices is not None:
        for node, totals in devices.totals.items():
            clients.setdefault(node, {}).update(asdict(totals))
    return {str(node): clients[node] for node in sorted(clients)}


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        outcome = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir))
    except ConfigError as exc:
        print(f"fedge-sim: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if hydra_cfg.mode == RunMode.RUN and outcome.results_path is not None:  # a sweep reports at its end
        print(f"report: {make_report([outcome.results_path.parent])}")
    return outcome.result.final.accuracy


def main() -> None:
    """Console entry point (``fedge-sim``)."""
    _hydra_main()


if __name__ == "__main__":
    main()
