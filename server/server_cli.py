"""``fedge-server``: the command line of :func:`fedge.server.serve.serve`.

Overrides are checked before anything is written (:mod:`fedge.conf.cli`, shared with
``fedge-sim``). ``--resume`` and ``--insecure`` are shorthands for
``server.resume=true`` and ``server.insecure=true``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedge.conf.build import ConfigError, build_strategy
from fedge.conf.checks import check_model_settings, check_strategy
from fedge.conf.cli import HydraApp
from fedge.conf.cli import run as run_app
from fedge.conf.logger_settings import check_logger
from fedge.conf.schema import register_configs
from fedge.conf.modes import check_async_settings
from fedge.conf.shape_settings import check_served_shape, check_shape_settings
from fedge.server.serve import serve
from fedge.strategies.fedbuff import check_linear

FLAGS = {"--resume": "server.resume=true", "--insecure": "server.insecure=true"}

register_configs()


def _job(cfg: DictConfig) -> float:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = serve(cfg, Path(HydraConfig.get().runtime.output_dir))
    except TimeoutError as exc:
        print(f"fedge-server: {exc}", file=sys.stderr)
        sys.exit(1)
    return result.final_accuracy


def _check(cfg: DictConfig) -> None:
    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    check_strategy(cfg)
    if cfg.get("eval_every", 1) != 1:  # its checkpoints carry every round's evaluated record
        raise ConfigError("eval_every: fedge-sim only; fedge-server evaluates every round")
    strategy = build_strategy(cfg)
    if check_async_settings(cfg) is not None:  # FedBuff needs a linear inner strategy; say why not before anything runs
        try:
            check_linear(strategy.strategy)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    check_logger(cfg)
    check_shape_settings(cfg)  # ranges and files, no torch
    check_served_shape(cfg)  # shape.lowrank / prune / distill need fedge-sim's devices
    check_model_settings(cfg)  # shape.*, else client.freeze / trainable: builds the model only when one is set


APP = HydraApp(
    prog="fedge-server",
    job=_job,
    summary="Coordinate a federation of real devices over gRPC (mTLS): wait for "
            "num_clients devices (fedge-client), run the configured Flower strategy for "
            "the given rounds, and checkpoint after every round.",
    examples=[
        "fedge-server server.certs=certs server.address=0.0.0.0:8443 num_clients=20",
        "fedge-server --resume server.certs=certs num_clients=20    # after a crash",
        "fedge-server --insecure server.address=127.0.0.1:8443     # loopback only",
        "fedge-server mode=async mode.buffer_size=3 rounds=100 num_clients=20",
    ],
    writes="results.json and final_model.npz (checkpoints: server.checkpoint_dir)",
    hidden_groups=["partition", "backend", "device"],  # fedge-sim's: data splits, workers, simulated devices
    knobs=["server.address", "server.certs", "server.checkpoint_dir", "server.round_timeout_s", "client.lr"],
    config_errors=(ConfigError, FileNotFoundError),  # FileNotFoundError: server.certs
    check=_check,
    flags=FLAGS,
)


def main() -> None:
    """Console entry point (``fedge-server``): overrides are checked before anything runs."""
    run_app(APP)


if __name__ == "__main__":
    main()
