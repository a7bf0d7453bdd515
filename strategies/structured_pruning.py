"""Structured pruning of the global model at configured rounds, around any strategy.

:class:`StructuredPruning` wraps the run's strategy. Before the training broadcast of a
pruning round it hands the global weights to a *pruner* (the server's
:class:`~fedge.tasks.shaping.channel_pruning.ChannelPruner`, injected by
:mod:`fedge.conf.shaping`: this layer imports no torch and no task), which returns the
smaller model's weights and its architecture as JSON. From then on every Task, train and
evaluate, carries that JSON under
:data:`~fedge.protos.model_architecture.ARCHITECTURE_KEY`, so each device rebuilds the
same architecture (either runtime) and decodes the broadcast against it; its uplink
state of the old shapes is dropped with a recorded reason (:mod:`fedge.client.edge_client`).

Flower's round loop keeps the model of before the round when a round's aggregate is
abandoned; at a pruning round that is the unpruned model, so the next round starts from
the pruned weights of this round instead (the architecture the devices now hold).

Refused at config time (:mod:`fedge.conf.shaping`): strategies with server state shaped
like the model (FedAvgM, FedAdam, FedYogi, FedAdagrad) and secure aggregation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedge.protos.model_architecture import ARCHITECTURE_KEY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reshaped:
    """A pruner's answer: the new weights by name and the architecture (JSON text) they fit."""

    arrays: dict[str, np.ndarray]
    architecture: str


#: ``pruner(server_round, global weights)``: the reshaped model at a pruning round, else None.
Pruner = Callable[[int, Mapping[str, np.ndarray]], "Reshaped | None"]


def _layout(arrays: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in arrays.items()}


class StructuredPruning(Strategy):
    """``strategy`` whose global model ``pruner`` reshapes at its rounds (see the module docstring)."""

    def __init__(self, strategy: Strategy, pruner: Pruner) -> None:
        self.strategy = strategy
        self.pruner = pruner
        self.log = getattr(strategy, "log", None)  # the run's dropped-reply log, if the inner strategy keeps one
        self.architecture: str | None = None  # JSON of the current architecture once pruned
        self._start: ArrayRecord | None = None  # the weights the last pruning round started from

    def _with_architecture(self, config: ConfigRecord) -> ConfigRecord:
        if self.architecture is not None:
            config[ARCHITECTURE_KEY] = self.architecture
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self._start is not None and _layout(arrays) != _layout(self._start):
            log.warning("round %d: the pruning round's aggregate was abandoned; starting from its pruned weights", server_round)
            arrays = self._start
        reshaped = self.pruner(server_round, {k: v.numpy() for k, v in arrays.items()})
        if reshaped is not None:
            arrays = ArrayRecord({k: Array(v) for k, v in reshaped.arrays.items()})
            self.architecture, self._start = reshaped.architecture, arrays
            log.info("round %d: global model pruned to %d parameters", server_round, sum(v.size for v in reshaped.arrays.values()))
        return self.strategy.configure_train(server_round, arrays, self._with_architecture(config), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self._start is not None and _layout(arrays) != _layout(self._start):
            arrays = self._start
        return self.strategy.configure_evaluate(server_round, arrays, self._with_architecture(config), grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.debug("StructuredPruning, wrapping:")
        self.strategy.summary()
