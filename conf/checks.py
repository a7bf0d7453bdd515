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
