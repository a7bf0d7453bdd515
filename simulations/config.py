"""Structured (typed) Hydra configs for ``fedge-sim``.

The YAML tree in ``conf/`` fills these dataclasses; OmegaConf type-checks every value
and override against them (``client.lr=abc`` fails with the key and the value).
Library objects (task, strategy, partitioner) are chosen by Hydra ``_target_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from fedge.client.config import TrainConfig
from fedge.server.config import ServerConfig

SCHEMA_NAME = "fedge_schema"


@dataclass
class CompressionConfig:
    """Codecs: ``uplink`` for client deltas, ``downlink`` for the broadcast model."""

    name: str = "none"
    uplink: str = "fp32"
    downlink: str = "fp32"
    max_update_bytes: int = 1 << 30


@dataclass
class BackendConfig:
    """Where simulated clients run. ``local``: worker processes on this machine."""

    name: str = "local"
    num_workers: int = 2  # worker processes; 0 = run clients in the server process
    threads_per_worker: int = 1  # torch intra-op threads per worker


@dataclass
class FedgeConfig:
    """The whole experiment."""

    task: Any = MISSING  # {_target_: a fedge.tasks.FederatedTask subclass, ...}
    strategy: Any = MISSING  # {_target_: a flwr.serverapp.strategy.Strategy, ...}
    partition: Any = MISSING  # {_target_: a flwr_datasets Partitioner, ...}
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    client: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    server: ServerConfig = field(default_factory=ServerConfig)  # gRPC server: fedge-server, backend=grpc
    num_clients: int = 10
    rounds: int = 20
    seed: int = 0
    progress: bool = True  # rich progress bar and summary table
    verbose: bool = False  # Flower's own INFO logs


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``defaults: [fedge_schema]``)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=FedgeConfig)
