"""Settings no simulated run can use, refused before anything runs.

Kept apart from :mod:`fedge.simulations.experiment` so that ``fedge-sim`` checks a
configuration without importing torch, the datasets or the Grids.
"""

from __future__ import annotations

from omegaconf import DictConfig

from fedge.conf.build import ConfigError, checked_settings
from fedge.conf.checks import check_model_settings
from fedge.conf.logger_settings import check_logger
from fedge.conf.shape_settings import check_shape_settings
from fedge.simulations.async_checks import check_async
from fedge.conf.schema import AttackConfig
from fedge.simulations.backends import BACKENDS


def check_experiment(cfg: DictConfig) -> None:
    """Refuse settings no run can use (the CLI calls this before Hydra writes anything)."""
    if cfg.num_clients < 2:
        raise ConfigError(f"num_clients must be >= 2, got {cfg.num_clients}")
    if cfg.rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {cfg.rounds}")
    if cfg.get("eval_every", 1) < 1:
        raise ConfigError(f"eval_every must be >= 1, got {cfg.eval_every}")
    if cfg.get("eval_every", 1) > 1 and cfg.mode.name == "async":
        raise ConfigError("eval_every: sync rounds only (mode=async evaluates after every aggregation step)")
    if cfg.backend.name not in BACKENDS:
        raise ConfigError(f"backend.name {cfg.backend.name!r} is not one of {BACKENDS}")
    for key in ("width", "hidden"):  # the task model's sizes (e.g. fedge.tasks.models.small_cnn's)
        value = cfg.task.get(key) if cfg.get("task") is not None else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"task.{key} must be an integer >= 1, got {value!r}")
    check_async(cfg)  # mode=async: what FedBuff cannot do
    check_logger(cfg)  # logger=tensorboard / mlflow: their packages installed
    check_shape_settings(cfg)  # no torch: ranges, files (shape=none included)
    check_model_settings(cfg)  # shape.*, else client.freeze / trainable: builds the model only when one is set
    if attack_settings(cfg).active and cfg.backend.name == "grpc":
        raise ConfigError("attack: simulated attackers run on backend=local or backend=ray (grpc devices are real fedge-client processes)")


def attack_settings(cfg: DictConfig) -> AttackConfig:
    """The ``attack`` node as checked :class:`AttackConfig` (none when the config has no such node)."""
    if cfg.get("attack") is None:
        return AttackConfig()
    return checked_settings(cfg.attack, "attack", AttackConfig)
