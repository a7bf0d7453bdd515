"""Value checks on a composed config that the libraries' constructors leave out.

Flower's strategies take ``fraction_train=2`` or ``min_train_nodes=50`` (of 10 clients)
without a word and then sample everyone or wait for nodes that never come; these
checks refuse such values before a run starts, naming the key.
"""

from __future__ import annotations

from omegaconf import DictConfig

from fedge.conf.cli import ConfigurationError

#: Strategy arguments that are shares of the clients (Flower's FedAvg family).
FRACTIONS = ("fraction_train", "fraction_evaluate")
#: Strategy arguments that count clients; none may exceed ``num_clients``.
NODE_COUNTS = ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes")


def check_strategy(cfg: DictConfig) -> None:
    """Refuse strategy arguments out of range: fractions outside [0, 1] (``fraction_train``
    must be > 0), node counts below 0 or above ``num_clients``."""
    strategy = cfg.strategy
    for name in FRACTIONS:
        if name in strategy:
            value = float(strategy[name])
            low_ok = value > 0 if name == "fraction_train" else value >= 0
            if not (low_ok and value <= 1):
                bounds = "(0, 1]" if name == "fraction_train" else "[0, 1]"
                raise ConfigurationError(f"strategy.{name}", f"must be in {bounds}, got {value:g}")
    for name in NODE_COUNTS:
        if name in strategy and not 0 <= int(strategy[name]) <= cfg.num_clients:
            raise ConfigurationError(
                f"strategy.{name}", f"must be in [0, num_clients={cfg.num_clients}], got {strategy[name]}"
            )


def check_model_settings(cfg: DictConfig) -> None:
    """The checks that build the task's model (import torch), for ``fedge-sim`` and
    ``fedge-server`` alike: ``shape.*`` when shaping is asked for (zero channels, ranks,
    students; :func:`fedge.conf.shaping.check_shaping`), else ``client.freeze`` /
    ``client.trainable`` (:func:`check_partial_update`)."""
    from fedge.conf.shape_settings import shaping_requested

    if shaping_requested(cfg):
        from fedge.conf.shaping import check_shaping

        check_shaping(cfg)
    else:
        check_partial_update(cfg)


def check_partial_update(cfg: DictConfig) -> None:
    """Refuse ``client.freeze`` / ``client.trainable`` patterns that name no tensor of the
    task's model (a typo would otherwise fail the first round, after the run was written),
    both set at once, or patterns that freeze everything, naming the key.

    Builds the task's model (imports torch) only when a pattern is set. Shaped runs
    (``shape.*``) rename or choose the tensors themselves and are checked by the shaping.
    """
    client = cfg.get("client")
    freeze = list(client.get("freeze") or ()) if client is not None else []
    trainable = list(client.get("trainable") or ()) if client is not None else []
    if not freeze and not trainable:
        return
    from fedge.conf.build import instantiate_node
    from fedge.protos.frozen_tensors import frozen_names
    from fedge.tasks.base import FederatedTask

    task = instantiate_node("task", cfg.task)
    assert isinstance(task, FederatedTask)
    try:
        frozen_names(task.build_model().state_dict(), freeze, trainable)
    except ValueError as exc:
        raise ConfigurationError("client.freeze" if freeze else "client.trainable", str(exc)) from None
