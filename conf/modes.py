"""The ``mode`` group (``mode=sync`` / ``mode=async``) read and checked, for fedge-sim and fedge-server."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from fedge.conf.build import ConfigError
from fedge.conf.schema import ModeConfig

#: ``mode.name`` values.
MODES = ("sync", "async")


def is_async(cfg: DictConfig) -> bool:
    return cfg.get("mode") is not None and cfg.mode.name == "async"


def mode_settings(cfg: DictConfig) -> ModeConfig:
    """The ``mode`` node as a checked :class:`ModeConfig` (ConfigError names the key)."""
    settings = OmegaConf.to_object(cfg.mode)
    if not isinstance(settings, ModeConfig):
        raise ConfigError(f"mode: expected the ModeConfig schema, got {type(settings).__name__}")
    if settings.name not in MODES:
        raise ConfigError(f"mode.name must be one of {MODES}, got {settings.name!r}")
    try:
        settings.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not settings.availability_slot_s > 0:
        raise ConfigError(f"mode.availability_slot_s must be > 0, got {settings.availability_slot_s}")
    if not 0 <= settings.stop_accuracy <= 1:
        raise ConfigError(f"mode.stop_accuracy must be in [0, 1] (0 = off), got {settings.stop_accuracy}")
    return settings


def check_async_settings(cfg: DictConfig) -> ModeConfig | None:
    """Refuse what no async run can use, in fedge-sim and fedge-server alike (cheap: no
    torch, no Flower strategy); the checked ``mode`` settings, or None for a sync run."""
    if cfg.get("mode") is None:
        return None
    settings = mode_settings(cfg)
    if settings.name != "async":
        return None
    if settings.concurrency > cfg.num_clients:
        raise ConfigError(f"mode.concurrency={settings.concurrency} exceeds num_clients={cfg.num_clients}")
    if cfg.secagg.enabled:
        raise ConfigError("mode=async cannot use secagg=on: secure aggregation masks a synchronous round's sum, "
                          "and a FedBuff buffer mixes updates from different model versions")
    if cfg.server.round_deadline_s:
        raise ConfigError("mode=async has no rounds to time out: server.round_deadline_s must be 0 "
                          "(use mode.max_staleness to bound how old an update may be)")
    if cfg.get("shape") is not None and float(cfg.shape.prune.sparsity) > 0:
        raise ConfigError("mode=async cannot use shape.prune: its schedule is per synchronous round")
    if cfg.get("shape") is not None and (float(cfg.shape.structured.ratio) > 0 or cfg.shape.structured.layers):
        raise ConfigError("mode=async cannot use shape.structured: its pruning rounds are synchronous rounds")
    return settings
