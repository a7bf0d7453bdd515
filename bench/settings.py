"""What both runtimes of the runner benchmark share: the workload and its partition.

One :class:`BenchSettings` fixes the task (digits CNN), the partition of its training
pool over the clients (flwr-datasets, built by :func:`make_partitioner`), the local
training (:class:`fedge.client.TrainConfig`), the number of rounds and the seed, so
fedge's ``local`` backend and Flower's simulation runtime run the same federation.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from omegaconf import OmegaConf

from fedge.client import TrainConfig
from fedge.simulations.partition import partition_indices
from fedge.tasks.digits import DigitsTask

PARTITIONS = ("iid", "dirichlet")
TASKS = ("digits", "image-lr")
#: Smallest Dirichlet partition accepted (100 clients share 1,437 training examples).
DIRICHLET_MIN_PARTITION_SIZE = 2


def fedge_sim_client_defaults() -> TrainConfig:
    """The local training ``fedge-sim`` runs by default (``conf/client/default.yaml``)."""
    node = OmegaConf.create(files("fedge.conf").joinpath("client", "default.yaml").read_text())
    return TrainConfig(**OmegaConf.to_container(node))  # type: ignore[arg-type]


@dataclass(frozen=True)
class BenchSettings:
    """The federation both runtimes run: same clients, data split, training, rounds."""

    num_clients: int = 100
    rounds: int = 5
    partition: str = "dirichlet"  # one of PARTITIONS; fedge-sim's default is Dirichlet(0.5)
    alpha: float = 0.5  # Dirichlet concentration (partition="dirichlet" only)
    seed: int = 0
    train: TrainConfig = field(default_factory=fedge_sim_client_defaults)
    clients_per_round: int = 0  # clients sampled per round; 0 = every client
    task_name: str = "digits"  # one of TASKS: digits (CNN) or image-lr (FLUTE's LR on the MNIST sample)

    def __post_init__(self) -> None:
        if self.num_clients < 2:
            raise ValueError(f"num_clients must be >= 2, got {self.num_clients}")
        if self.rounds < 2:
            raise ValueError(f"rounds must be >= 2 (round 1 holds the start-up), got {self.rounds}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {self.partition!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0 <= self.clients_per_round <= self.num_clients:
            raise ValueError(f"clients_per_round must be in [0, num_clients], got {self.clients_per_round}")
        if self.task_name not in TASKS:
            raise ValueError(f"task_name must be one of {TASKS}, got {self.task_name!r}")

    @property
    def sampled(self) -> int:
        """Clients that train each round."""
        return self.clients_per_round or self.num_clients

    def task(self) -> DigitsTask:
        """The learning task (a fresh object; it loads its data on demand)."""
        if self.task_name == "image-lr":
            from bench.scale_tasks import ImageLogReg

            return ImageLogReg(seed=self.seed)
        return DigitsTask(seed=self.seed)


def make_partitioner(settings: BenchSettings) -> Partitioner:
    """The flwr-datasets partitioner of ``settings`` (labels are the ``label`` column)."""
    if settings.partition == "iid":
        return IidPartitioner(num_partitions=settings.num_clients)
    return DirichletPartitioner(
        num_partitions=settings.num_clients,
        partition_by="label",
        alpha=settings.alpha,
        min_partition_size=DIRICHLET_MIN_PARTITION_SIZE,
        self_balancing=False,
        seed=settings.seed,
    )


def client_partitions(settings: BenchSettings, labels: np.ndarray) -> list[np.ndarray]:
    """Training-pool indices of each client, partition ``i`` for client ``i``."""
    return partition_indices(labels, make_partitioner(settings))


def fedavg_options(settings: BenchSettings) -> dict[str, float | int]:
    """Flower FedAvg's arguments: ``settings.sampled`` clients train each round, no federated evaluation."""
    return {
        "fraction_train": settings.sampled / settings.num_clients,
        "fraction_evaluate": 0.0,
        "min_train_nodes": settings.sampled,
        "min_available_nodes": settings.num_clients,
    }


def initial_arrays(settings: BenchSettings) -> ArrayRecord:
    """The seeded initial global model, the same for both runtimes."""
    torch.manual_seed(settings.seed)
    return ArrayRecord(settings.task().build_model().state_dict())


def machine_info() -> dict[str, object]:
    """Cores, platform and the versions of the libraries being compared."""

    def _version(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "flwr-datasets": _version("flwr-datasets"),
        "ray": _version("ray"),
        "fedge": _version("fedge"),
    }
