"""A federation over real devices, configured like ``fedge-sim``: :func:`serve` (``fedge-server``).

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

import logging
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from omegaconf import DictConfig, OmegaConf

from fedge.conf.build import (
    ConfigError,
    build_strategy,
    build_task,
    round_config,
    seed_everything,
    server_settings,
    train_defaults,
)
from fedge.protos.codecs.compression_setup import required_codecs
from fedge.server.checkpoint import fingerprint, load_checkpoint
from fedge.server.dashboards import also, open_dashboards
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, RoundRecord
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.results import write_results
from fedge.server.resume import run_resumable
from fedge.server.transport import FederationServer, ServerCredentials, check_insecure

log = logging.getLogger("fedge.server")

#: Keys that may change between a run and its resume (they do not change the experiment).
RUN_ONLY_KEYS = ("server", "progress", "verbose", "logger")
#: Seconds to wait, after the last round, for devices to hear that the federation is over.
FAREWELL_S = 10.0


def experiment_fingerprint(cfg: DictConfig) -> str:
    """Fingerprint of what is learned and how (not where it is served from)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return fingerprint({k: v for k, v in container.items() if k not in RUN_ONLY_KEYS})


def serve(cfg: DictConfig, out_dir: Path | None = None) -> FederationResult:
    """Run the federation ``cfg`` describes over gRPC; write results into ``out_dir``."""
    settings = server_settings(cfg)
    if settings.round_deadline_s > 0:
        raise ConfigError(
            f"server.round_deadline_s={settings.round_deadline_s:g} is simulated time (fedge-sim with device "
            "profiles); real devices get the real deadline server.round_timeout_s"
        )
    train_cfg = train_defaults(cfg)
    try:
        if settings.insecure:
            check_insecure(settings.address)
        credentials = None if settings.insecure else ServerCredentials.from_dir(settings.certs)
        # Checked now, before any device joins: a corrupt or edited checkpoint is a clear error.
        checkpoint = load_checkpoint(settings.checkpoint_dir, experiment_fingerprint(cfg)) if settings.resume else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    seed_everything(cfg.seed)
    task, data, _ = build_task(cfg)  # the test split for central evaluation
    test = data.test
    strategy = build_strategy(cfg, len(data.train))  # num-examples cap: the task's train-set size
    if cfg.secagg.enabled:  # its stages over gRPC come with the asyncio server (not built yet)
        raise ConfigError("secagg=on runs in fedge-sim (backend=local or ray) for now, not in fedge-server")
    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(task.build_model().state_dict())
    evaluator = CentralEvaluator(task, test, cfg.seed)

    server = FederationServer(
        settings, credentials, required_codecs=required_codecs(strategy.uplink, strategy.downlink), max_update_bytes=strategy.max_update_bytes
    ).start()
    grid = GrpcGrid(server)
    print(f"fedge-server: listening on {server.address} ({'mTLS' if server.secure else 'INSECURE'}); "
          f"waiting for {cfg.num_clients} devices", flush=True)
    try:
        grid.wait_for_nodes(cfg.num_clients)
        with open_dashboards(cfg, out_dir) as dashboards:  # logger=tensorboard / mlflow; none: nothing
            result = run_resumable(
                strategy, grid, initial, evaluator, cfg.rounds, settings.checkpoint_dir,
                experiment_fingerprint(cfg), resume=checkpoint or False, keep=settings.keep_checkpoints,
                train_config=round_config(train_cfg), on_round=also(_report, dashboards), dropped_log=strategy.log,
            )
            dashboards.finish(result)
        grid.close()
        _farewell(server)
    finally:
        server.stop()
    if out_dir is not None:
        write_results(out_dir, cfg, result, strategy.log, grid.transport_report())
    print(f"final accuracy: {result.final.accuracy:.4f}", flush=True)
    return result


def _report(record: RoundRecord) -> None:
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
