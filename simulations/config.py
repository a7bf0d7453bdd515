"""Structured (typed) Hydra configs for ``fedge-sim``.

The YAML tree in ``conf/`` fills these dataclasses; OmegaConf type-checks every value
and override against them (``client.lr=abc`` fails with the key and the value).
Library objects (task, strategy, partitioner) are chosen by Hydra ``_target_``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from fedge.client.config import TrainConfig
from fedge.client.device import DeviceProfile
from fedge.server.config import ServerConfig

SCHEMA_NAME = "fedge_schema"


@dataclass
class CompressionConfig:
    """What crosses the network (``conf/compression/*.yaml``).

    ``codec`` encodes client deltas (uplink); the fields below it are that codec's
    parameters, each used only by the codecs that take it. ``downlink`` encodes the
    broadcast model; with ``downlink_delta`` the broadcast is the compressed change
    from the model devices hold, with server-side error feedback.
    """

    name: str = "none"
    codec: str = "fp32"  # fp32, fp16, q1..q8[s], uniform, topk, randk, sign, powersgd, kmeans
    ratio: float = 0.01  # topk, randk: share of entries kept
    scope: str = "tensor"  # topk: ratio of each tensor ("tensor") or of the whole update ("global")
    values: str = "fp32"  # topk, randk: codec of the kept values (fp32, fp16, q8, ...)
    bits: int = 8  # uniform, kmeans
    stochastic: bool = False  # uniform: unbiased stochastic rounding
    per_channel: bool = False  # uniform: one scale per output channel
    unbiased: bool = False  # randk: scale kept values by d/k
    rank: int = 2  # powersgd
    error_feedback: bool = False  # clients carry the compression error to the next round
    dense_below: int = 0  # float tensors with fewer elements go with `fallback`
    fallback: str = "fp32"
    downlink: str = "fp32"
    downlink_delta: bool = False
    max_update_bytes: int = 1 << 30


@dataclass
class BackendConfig:
    """Where simulated clients run. ``local``: worker processes on this machine;
    ``ray``: a Ray actor pool (``conf/backend/ray.yaml``)."""

    name: str = "local"
    num_workers: int = 2  # worker processes; 0 = run clients in the server process
    threads_per_worker: int = 1  # torch intra-op threads per worker (or Ray actor)
    # ray only:
    address: Optional[str] = None  # None: private Ray on this machine; "auto", "ray://host:port"
    num_actors: int = 4  # Ray actors, clients pinned to them
    cpus_per_actor: float = 1.0  # Ray logical CPUs each actor reserves


@dataclass
class DeviceConfig:
    """Simulated devices (``conf/device/*.yaml``): profiles and the fleet's mix of them.

    ``mix`` maps profile names to shares of the clients (summing to 1); each client gets
    a profile deterministically from the seed (:mod:`fedge.simulations.devices`). An
    empty mix (``device=none``) simulates nothing: no simulated time, energy or deadline.
    """

    name: str = "none"
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)  # conf/device/profile/*.yaml
    mix: dict[str, float] = field(default_factory=dict)  # profile name -> share of clients
    start_hour: float = 0.0  # simulated hour of day when round 1 starts (for online_hours)
    round_interval_s: float = 0.0  # simulated seconds between round starts, at least (0: back to back)


@dataclass
class SecAggConfig:
    """Secure aggregation (``conf/secagg/*.yaml``; :mod:`fedge.strategies.secagg`).

    The quantisation and sparsity come from the ``compression`` group where it says
    (:func:`fedge.simulations.secagg_setup.secagg_settings`); the rest is here.
    """

    name: str = "off"
    enabled: bool = False
    value_bits: int = 8  # bits per coordinate when the codec does not set them
    clip: float = 0.2  # coordinates clipped to [-clip, clip] before quantising
    neighbours: int = 0  # k; 0 = ~3 log2(n)
    threshold: int = 0  # t; 0 = k // 2 + 1
    max_examples: float = 400.0  # weight 1 at this many examples; 0 = equal weights


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
    device: DeviceConfig = field(default_factory=DeviceConfig)  # simulated device profiles and mix
    secagg: SecAggConfig = field(default_factory=SecAggConfig)  # secure aggregation (secagg=on)
    dp_delta: float = 1e-5  # delta at which DP runs report epsilon each round
    num_clients: int = 10
    rounds: int = 20
    seed: int = 0
    progress: bool = True  # rich progress bar and summary table
    verbose: bool = False  # Flower's own INFO logs


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``defaults: [fedge_schema]``)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=FedgeConfig)
