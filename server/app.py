"""``fedge-server``: a federation over real devices, configured like ``fedge-sim``.

It reads the same Hydra tree (``conf/``: task, strategy, compression, client, rounds,
seed, ...) plus the ``server.*`` keys, serves the Federation gRPC service, waits for
``num_clients`` devices, runs ``rounds`` rounds of the configured Flower strategy
(wrapped by CompressedStrategy) and writes ``results.json`` and ``final_model.npz``
to its Hydra output directory, with a checkpoint in ``server.checkpoint_dir`` after
every round::

    fedge-certs certs --server-host myserver.example --devices 20
    fedge-server server.certs=certs server.address=0.0.0.0:8443 num_clients=20 rounds=50
    fedge-server --resume server.certs=certs ...     # after a crash: continue where it stopped
    fedge-server --insecure server.address=127.0.0.1:8443   # loopback development only

``--resume`` and ``--insecure`` are shorthands for ``server.resume=true`` and
``server.insecure=true``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedge.client.config import TrainConfig
from fedge.client.qat import final_steps
from fedge.server.checkpoint import fingerprint
from fedge.server.config import ServerConfig
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.resume import run_resumable
from fedge.server.transport import FederationServer, ServerCredentials
from fedge.simulations.app import ConfigError, _build, build_strategy
from fedge.simulations.config import register_configs
from fedge.simulations.grpc_backend import required_codecs
from fedge.strategies import CompressedStrategy
from fedge.tasks.base import FederatedTask

log = logging.getLogger("fedge.server")

FLAGS = {"--resume": "server.resume=true", "--insecure": "server.insecure=true"}
#: Keys that may change between a run and its resume (they do not change the experiment).
RUN_ONLY_KEYS = ("server", "progress", "verbose")
#: Seconds to wait, after the last round, for devices to hear that the federation is over.
FAREWELL_S = 10.0


def experiment_fingerprint(cfg: DictConfig) -> str:
    """Fingerprint of what is learned and how (not where it is served from)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return fingerprint({k: v for k, v in container.items() if k not in RUN_ONLY_KEYS})


def serve(cfg: DictConfig, out_dir: Path | None = None) -> FederationResult:
    """Run the federation ``cfg`` describes over gRPC; write results into ``out_dir``."""
    settings: ServerConfig = OmegaConf.to_object(cfg.server)  # type: ignore[assignment]
    try:
        settings.check()
        if settings.round_deadline_s > 0:
            raise ValueError(
                f"server.round_deadline_s={settings.round_deadline_s:g} is simulated time (fedge-sim with device "
                "profiles); real devices get the real deadline server.round_timeout_s"
            )
        train_cfg = TrainConfig(**OmegaConf.to_container(cfg.client))  # type: ignore[arg-type]
        credentials = None if settings.insecure else ServerCredentials.from_dir(settings.certs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.max_workers < 2 * cfg.num_clients:
        log.warning(
            "server.max_workers=%d is below 2 x num_clients (%d): devices waiting in a long poll "
            "hold a thread each, so heartbeats may be refused", settings.max_workers, 2 * cfg.num_clients,
        )
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task: FederatedTask = _build("task", cfg.task)  # type: ignore[assignment]
    test = task.load().test
    if cfg.secagg.enabled:  # its stages over gRPC come with the asyncio server
        raise ConfigError("secagg=on runs in fedge-sim (backend=local or ray) for now, not in fedge-server")
    strategy = build_strategy(cfg)
    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(task.build_model().state_dict())
    evaluator = CentralEvaluator(task, test, cfg.seed)

    server = FederationServer(
        settings, credentials, required_codecs=required_codecs(strategy), max_update_bytes=strategy.max_update_bytes
    ).start()
    grid = GrpcGrid(server)
    print(f"fedge-server: listening on {server.address} ({'mTLS' if server.secure else 'INSECURE'}); "
          f"waiting for {cfg.num_clients} devices", flush=True)
    try:
        grid.wait_for_nodes(cfg.num_clients)
        result = run_resumable(
            strategy, grid, initial, evaluator, cfg.rounds, settings.checkpoint_dir,
            experiment_fingerprint(cfg), resume=settings.resume,
            train_config=ConfigRecord(train_cfg.to_config()), on_round=_report,
        )
        grid.close()
        _farewell(server)
    finally:
        server.stop()
    if out_dir is not None:
        _write_results(out_dir, cfg, result, strategy, grid)
    print(f"final accuracy: {result.final.accuracy:.4f}", flush=True)
    return result


def _report(record) -> None:
    print(
        f"round {record.round}: accuracy {record.accuracy:.4f}, replies {record.replies}, "
        f"failures {record.failures}, up {record.uplink_bytes} B, down {record.downlink_bytes} B",
        flush=True,
    )


def _farewell(server: FederationServer) -> None:
    """Give devices a moment to pull FINISHED and leave."""
    deadline = time.monotonic() + FAREWELL_S
    while server.registry.live_node_ids() and time.monotonic() < deadline:
        time.sleep(0.2)


def _write_results(out_dir: Path, cfg: DictConfig, result: FederationResult, strategy: CompressedStrategy, grid: GrpcGrid) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "final": asdict(result.final),
        "rounds": [asdict(r) for r in result.rounds],
        "dropped_replies": [asdict(d) for d in strategy.log.dropped],
        **grid.transport_report(),
        "qat": final_steps(result.flower_result.train_metrics_clientapp),  # LSQ steps for fedge-export
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
    np.savez(out_dir / "final_model.npz", **{k: v.numpy() for k, v in result.final_arrays.items()})


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = serve(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"fedge-server: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TimeoutError as exc:
        print(f"fedge-server: {exc}", file=sys.stderr)
        sys.exit(1)
    return result.final.accuracy


def main() -> None:
    """Console entry point (``fedge-server``)."""
    sys.argv = [sys.argv[0], *(FLAGS.get(arg, arg) for arg in sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
