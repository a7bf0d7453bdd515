"""From a composed experiment config to the objects both apps run: the Hydra builders.

``fedge-sim`` and ``fedge-server`` read the same tree (:mod:`fedge.conf.schema`); this
module turns its nodes into a task, a wrapped strategy, training defaults and server
settings, and seeds the global random streams, the same way for both. Every builder
raises :class:`ConfigError` naming the key, never a library's traceback.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedge.client.train_config import TrainConfig
from fedge.conf.schema import ServerConfig
from fedge.protos.codecs.compression_setup import compression_setup
from fedge.tasks.base import FederatedTask, TaskData
from fedge.tasks.custom import check_deterministic, task_reference

if TYPE_CHECKING:  # Flower and torch are imported where used: `fedge-sim --help` needs neither
    from flwr.app import ConfigRecord

    from fedge.strategies.compressed import CompressedStrategy

#: ``_target_`` of ``conf/task/custom.yaml`` (its constructor arguments are under ``args``).
CUSTOM_TASK_TARGET = "fedge.tasks.custom.custom_task"


class ConfigError(ValueError):
    """A configuration that type-checks but cannot run; the message names the key."""


def instantiate_node(kind: str, node: DictConfig, **kwargs: object) -> object:
    """The object a ``_target_`` node describes (``kind`` names the group in errors)."""
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:  # hydra wraps the constructor's error; show its cause
        cause = exc.__cause__ or exc
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        raise ConfigError(f"cannot build {kind} ({target}): {cause}") from None


def node_dict(node: DictConfig) -> dict[str, Any]:
    """A mapping node as a plain dict (OmegaConf types ``to_container`` as any container)."""
    container = OmegaConf.to_container(node)
    if not isinstance(container, dict):
        raise ConfigError(f"expected a mapping, got {type(container).__name__}")
    return {str(key): value for key, value in container.items()}


def build_task(cfg: DictConfig) -> tuple[FederatedTask, TaskData, str]:
    """The configured task, its data and the data's digest (:func:`fedge.tasks.custom.data_digest`).

    ``load()`` runs twice: a task whose data differ between calls is refused, naming it
    (every worker process loads the data again and takes its partition by index)."""
    task = instantiate_node("task", cfg.task)
    if not isinstance(task, FederatedTask):
        raise ConfigError(f"task._target_ must build a fedge.tasks.base.FederatedTask, got {type(task).__name__}")
    data = task.load()
    try:
        digest = check_deterministic(task, data)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return task, data, digest


def device_task(cfg: DictConfig, task: FederatedTask) -> tuple[str, dict[str, object]]:
    """What a ``fedge-client`` needs to build ``task`` (the task the ``task`` node built):
    its ``--task`` reference and its ``--task-option`` constructor arguments."""
    node = OmegaConf.to_container(cfg.task, resolve=True)
    assert isinstance(node, dict)
    if node.get("_target_") == CUSTOM_TASK_TARGET:
        return task_reference(task), dict(node.get("args") or {})
    return task_reference(task), {str(k): v for k, v in node.items() if not str(k).startswith("_")}


def build_strategy(cfg: DictConfig, max_num_examples: int = 0) -> CompressedStrategy:
    """The configured Flower strategy wrapped by CompressedStrategy with the configured codecs
    and reply validation (``server.*``; ``max_num_examples``: the task-derived cap)."""
    from fedge.strategies.compressed import CompressedStrategy

    try:
        setup = compression_setup(node_dict(cfg.compression))
    except ValueError as exc:
        raise ConfigError(f"compression: {exc}") from None
    inner = instantiate_node("strategy", cfg.strategy)
    from flwr.serverapp.strategy import Strategy

    if not isinstance(inner, Strategy):
        raise ConfigError(f"strategy: {cfg.strategy.get('_target_')} built a {type(inner).__name__}, not a Flower Strategy")
    try:
        validation = server_settings(cfg).reply_policy(max_num_examples)
    except ValueError as exc:
        raise ConfigError(f"server: {exc}") from None
    from fedge.conf.sparse_rules import check_rule_fits_uplink

    try:
        check_rule_fits_uplink(inner, setup.uplink, server_settings(cfg).allow_flower_robust_on_sparse)
    except ValueError as exc:
        raise ConfigError(f"strategy: {exc}") from None
    return CompressedStrategy(
        inner,
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
        return TrainConfig(**node_dict(cfg.client))
    except ValueError as exc:
        raise ConfigError(f"client: {exc}") from None


def round_config(train: TrainConfig) -> ConfigRecord:
    """The training defaults as the ConfigRecord every round's instructions carry."""
    from flwr.app import ConfigRecord

    return ConfigRecord({key: value for key, value in train.to_config().items()})


class Checkable(Protocol):
    """A schema dataclass that refuses bad values in ``check()`` (``ValueError``)."""

    def check(self) -> None: ...


Settings = TypeVar("Settings", bound=Checkable)


def server_settings(cfg: DictConfig) -> ServerConfig:
    """The ``server`` node as checked :class:`ServerConfig`."""
    return checked_settings(cfg.server, "server", ServerConfig)


def checked_settings(node: DictConfig, name: str, schema: type[Settings]) -> Settings:
    """The structured node ``name`` as its ``schema`` dataclass, after the dataclass's
    ``check()`` (its ``ValueError`` becomes a :class:`ConfigError`)."""
    settings = OmegaConf.to_object(node)
    if not isinstance(settings, schema):  # a node not typed by the schema (a hand-built config)
        raise ConfigError(f"{name}: expected the {schema.__name__} schema, got {type(settings).__name__}")
    try:
        settings.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return settings


def seed_everything(seed: int, with_torch: bool = True) -> None:
    """Seed the global streams a run draws from: ``random`` (Flower samples clients with
    it), numpy's legacy global generator and torch (model initialisation; not imported
    for it when ``with_torch`` is false: a server process that builds no model)."""
    random.seed(seed)
    np.random.seed(seed)
    if not with_torch:
        return
    import torch  # here, not at the top: `fedge-sim --help` and config checks need no torch

    torch.manual_seed(seed)
