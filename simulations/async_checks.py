"""What ``fedge-sim mode=async`` cannot do, refused before anything runs.

Apart from :mod:`fedge.simulations.async_run` so that ``fedge-sim`` checks a
configuration without importing torch, Flower or the Grids.
"""

from __future__ import annotations

from omegaconf import DictConfig

from fedge.conf.build import ConfigError
from fedge.conf.modes import check_async_settings
from fedge.strategies.fedbuff_config import LINEAR_STRATEGY_NAMES, linear_refusal

def check_async(cfg: DictConfig) -> None:
    """Refuse settings an async simulation cannot use (cheap: no torch, no Flower strategy)."""
    if check_async_settings(cfg) is None:
        return
    target = str(cfg.strategy.get("_target_", ""))
    name = target.rsplit(".", 1)[-1]
    if target.startswith("flwr.serverapp.strategy.") and name not in LINEAR_STRATEGY_NAMES:
        raise ConfigError(linear_refusal(name))  # early; any other class is checked once built
    if cfg.backend.name == "grpc":
        raise ConfigError("fedge-sim mode=async runs on backend=local or backend=ray (over gRPC: fedge-server mode=async)")
    if not cfg.device.mix and not cfg.device.get("trace"):
        raise ConfigError("mode=async simulates time from device profiles: choose device=mix_wearable_phone_gateway "
                          "(or another device group) or device.trace=FILE")
