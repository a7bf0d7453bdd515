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
    fedge-server mode=async mode.buffer_size=3 mode.concurrency=20 rounds=200 ...  # FedBuff

With ``mode=async`` (:mod:`fedge.server.async_grpc_run`) there are no rounds: every free
device gets the newest model, every ``mode.buffer_size`` accepted pushes make one
aggregation step (``rounds`` counts steps), and checkpoints keep the buffer, the model
version and the tasks in flight.

``--resume`` and ``--insecure`` are shorthands for ``server.resume=true`` and
``server.insecure=true``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path

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
from fedge.conf.modes import check_async_settings
from fedge.conf.secagg_setup import secagg_sections, secure_strategy
from fedge.conf.server_reference import attach_server_reference
from fedge.conf.shape_settings import check_served_shape
from fedge.conf.shaping import shape_experiment
from fedge.protos.codecs.compression_setup import required_codecs
from fedge.server.async_grpc_grid import AsyncGrpcGrid
from fedge.server.async_grpc_run import run_async_grpc
from fedge.server.checkpoint import fingerprint, load_checkpoint
from fedge.server.dashboards import also, open_dashboards
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import FederationResult, RoundRecord
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.results import robust_section, write_results
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
    check_served_shape(cfg)  # shape.lowrank / prune / distill are fedge-sim's only
    mode = check_async_settings(cfg)  # None: a synchronous run
    experiment = experiment_fingerprint(cfg)  # before shaping writes client.trainable (a resume computes the same)
    try:
        if settings.insecure:
            check_insecure(settings.address)
        credentials = None if settings.insecure else ServerCredentials.from_dir(settings.certs)
        # Checked now, before any device joins: a corrupt or edited checkpoint is a clear error.
        checkpoint = load_checkpoint(settings.checkpoint_dir, experiment) if settings.resume else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    seed_everything(cfg.seed)
    task, data, _ = build_task(cfg)  # the test split for central evaluation
    test = data.test
    # shape=structured (the architecture travels in every Task) or shape.init (a starting checkpoint)
    shaping = shape_experiment(cfg, task)  # draws the initial model after torch.manual_seed(cfg.seed)
    if shaping.trainable:  # a frozen backbone: only the new head trains and travels
        cfg.client.trainable = shaping.trainable
    train_cfg = train_defaults(cfg)
    strategy = build_strategy(cfg, len(data.train))  # num-examples cap: the task's train-set size
    attach_server_reference(strategy, shaping.task, data.train, train_cfg, cfg.seed)  # FLTrust's root dataset; others: nothing
    secure = secure_strategy(cfg, strategy)  # secagg=on: SecAgg+ stages travel as ordinary tasks
    initial = ArrayRecord(shaping.initial)
    evaluator = CentralEvaluator(shaping.task, test, cfg.seed, rebuild=shaping.rebuild)

    server = FederationServer(
        settings, credentials, required_codecs=required_codecs(strategy.uplink, strategy.downlink), max_update_bytes=strategy.max_update_bytes
    ).start()
    grid = GrpcGrid(server) if mode is None else AsyncGrpcGrid(server)
    print(f"fedge-server: listening on {server.address} ({'mTLS' if server.secure else 'INSECURE'}); "
          f"waiting for {cfg.num_clients} devices", flush=True)
    sections: dict = {}
    unfinished: set[int] = set()  # async: devices whose task the end withdrew
    try:
        # a resumed async run goes on with the first device back: the others rejoin as they
        # finish what they were doing (their tasks wait for them on the board)
        grid.wait_for_nodes(1 if mode is not None and checkpoint is not None else cfg.num_clients)
        with open_dashboards(cfg, out_dir) as dashboards:  # logger=tensorboard / mlflow; none: nothing
            if isinstance(grid, AsyncGrpcGrid) and mode is not None:
                run = run_async_grpc(
                    mode, strategy, grid, initial, evaluator, round_config(train_cfg), settings, cfg.rounds, cfg.seed,
                    experiment, checkpoint, on_step=also(_report, dashboards),
                )
                result: FederationResult = run.result
                sections["async"] = run.section
                unfinished = run.unfinished_nodes
            else:
                result = run_resumable(
                    shaping.wrap(secure), grid, initial, evaluator, cfg.rounds, settings.checkpoint_dir,
                    experiment, resume=checkpoint or False, keep=settings.keep_checkpoints,
                    train_config=round_config(train_cfg), on_round=also(_report, dashboards), dropped_log=strategy.log,
                )
            dashboards.finish(result)
        grid.close()
        # async: devices may still be training on tasks the end withdrew (or not be back
        # since a restart); they hear the federation is over when they come back
        _farewell(server, max(FAREWELL_S, settings.round_timeout_s) if unfinished else FAREWELL_S, unfinished)
    finally:
        server.stop()
    if out_dir is not None:
        if shaping.report:
            sections["shape"] = shaping.report
        sections.update(robust_section(strategy))  # clipped / excluded devices per round, and why
        write_results(out_dir, cfg, result, strategy.log, grid.transport_report(), sections={**secagg_sections(secure), **sections})
    print(f"final accuracy: {result.final_accuracy:.4f}", flush=True)
    return result


def _report(record: RoundRecord) -> None:
    print(
        f"round {record.round}: accuracy {'-' if record.accuracy is None else format(record.accuracy, '.4f')}, replies {record.replies}, "
        f"failures {record.failures}, up {record.uplink_bytes} B, down {record.downlink_bytes} B",
        flush=True,
    )


def _farewell(server: FederationServer, wait_s: float = FAREWELL_S, expected: Collection[int] = ()) -> None:
    """Give devices up to ``wait_s`` seconds to pull FINISHED and leave; also wait for the
    ``expected`` ones (still working when the run ended) to come back and leave."""
    registry = server.registry
    deadline = time.monotonic() + wait_s

    def waiting() -> bool:
        return bool(registry.live_node_ids()) or any(not registry.knows(n) or registry.is_alive(n) for n in expected)

    while waiting() and time.monotonic() < deadline:
        time.sleep(0.2)
