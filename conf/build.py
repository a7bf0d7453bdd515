"""From a composed experiment config to the objects both apps run: the Hydra builders.

``fedge-sim`` and ``fedge-server`` read the same tree (:mod:`fedge.conf.schema`); this
module turns its nodes into a task, a wrapped strategy, training defaults and server
settings, and seeds the global random streams, the same way for both. Every builder
raises :class:`ConfigError` naming the key, never a library's traceback.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedge.client.train_config import TrainConfig
from fedge.conf.schema import ServerConfig
from fedge.protos.codecs.compression_setup import compression_setup
from fedge.strategies import CompressedStrategy


class ConfigError(ValueError):
    """A configuration that type-checks but cannot run; the message names the key."""


def instantiate_node(kind: str, node: DictConfig, **kwargs: object) -> object:
    """The object a ``_target_`` node describes (``kind`` names the group in errors)."""
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # hydra wraps the constructor's error; show its cause
        cause = exc.__cause__ or exc
        raise ConfigError(f"cannot build {kind} from {OmegaConf.to_container(node)}: {cause}") from None


def build_strategy(cfg: DictConfig, max_num_examples: int = 0) -> CompressedStrategy:
    """The configured Flower strategy wrapped by CompressedStrategy with the configured codecs
    and reply validation (``server.*``; ``max_num_examples``: the task-derived cap)."""
    try:
        setup = compression_setup(OmegaConf.to_container(cfg.compression))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"compression: {exc}") from None
    inner = instantiate_node("strategy", cfg.strategy)
    try:
        validation = server_settings(cfg).reply_policy(max_num_examples)
    except ValueError as exc:
        raise ConfigError(f"server: {exc}") from None
    return CompressedStrategy(
        inner,  # type: ignore[arg-type]
        uplink=setup.uplink,
        downlink=setup.downlink,
        downlink_delta=setup.downlink_delta,
        max_update_bytes=setup.max_update_bytes,
        freeze=list(cfg.client.freeze),  # partial updates: frozen tensors are never sent
        trainable=list(cfg.client.trainable),
        validation=validation,
    )


def train_defaults(cfg: DictConfig) -> TrainConfig:
    """The ``client`` node as checked training defaults."""
    try:
        return TrainConfig(**OmegaConf.to_container(cfg.client))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"client: {exc}") from None


def round_config(train: TrainConfig) -> ConfigRecord:
    """The training defaults as the ConfigRecord every round's instructions carry."""
    return ConfigRecord({key: value for key, value in train.to_config().items()})


def server_settings(cfg: DictConfig) -> ServerConfig:
    """The ``server`` node as checked :class:`ServerConfig`."""
    settings: ServerConfig = checked_settings(cfg.server)
    return settings


def checked_settings(node: DictConfig) -> Any:
    """A structured node as its schema dataclass, after the dataclass's ``check()``
    (its ``ValueError`` becomes a :class:`ConfigError`)."""
    settings = OmegaConf.to_object(node)
    try:
        settings.check()  # type: ignore[union-attr]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return settings


def seed_everything(seed: int) -> None:
    """Seed the global streams a run draws from: ``random`` (Flower samples clients with
    it), numpy's legacy global generator and torch (model initialisation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
