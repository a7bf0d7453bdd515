"""Unstructured magnitude pruning of the global model on a schedule, around any strategy.

:class:`MagnitudePruning` wraps the run's strategy. Before the training broadcast of each
pruning round it zeroes, in every prunable tensor (float, >= 2-D, named ``*weight``: conv
and linear weights; biases and norms stay dense), the smallest-magnitude entries up to
that round's sparsity; the zeros then are the mask. Every round's broadcast and aggregate
are masked again, so a server optimiser (FedAdam's momentum) cannot regrow them. Devices
keep the zeros while training (:mod:`fedge.tasks.shaping.keep_zeros`), so their updates
are zero there too; ``compression.downlink=nonzero`` sends the model as sparse tensors.

Schedule (Zhu & Gupta 2017, "To prune, or not to prune"): pruning rounds ``start_round``,
``start_round + every``, ... up to ``end_round``; at pruning round ``t`` the sparsity is
``s * (1 - (1 - (t - start) / (end - start))^3)`` (all at once when ``start == end``).
Tuning: prune gradually over the first half to two thirds of the run and leave rounds
after ``end_round`` to recover; ``every`` 1-2.

Hand-written: the per-tensor magnitude threshold is one ``np.partition``; torch's
``nn.utils.prune`` works on modules, and the server holds arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruningSchedule:
    """Target ``sparsity`` in [0, 1) reached at ``end_round``, from ``start_round``, every ``every`` rounds."""

    sparsity: float
    start_round: int = 1
    end_round: int = 1
    every: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.sparsity < 1:
            raise ValueError(f"shape.prune.sparsity must be in (0, 1), got {self.sparsity}")
        if self.start_round < 1:
            raise ValueError(f"shape.prune.start_round must be >= 1, got {self.start_round}")
        if self.end_round < self.start_round:
            raise ValueError(f"shape.prune.end_round must be >= start_round ({self.start_round}), got {self.end_round}")
        if self.every < 1:
            raise ValueError(f"shape.prune.every must be >= 1, got {self.every}")

    def sparsity_at(self, server_round: int) -> float | None:
        """The sparsity to prune to before ``server_round``'s training, or None (no pruning then)."""
        t, start, end = server_round, self.start_round, self.end_round
        if t < start or t > end or ((t - start) % self.every and t != end):
            return None
        if end == start:
            return self.sparsity
        return self.sparsity * (1 - (1 - (t - start) / (end - start)) ** 3)


def prunable(name: str, array: np.ndarray) -> bool:
    """Tensors pruning touches: float weights of >= 2 dimensions."""
    return name.endswith("weight") and array.ndim >= 2 and np.issubdtype(array.dtype, np.floating)


def magnitude_masks(arrays: Mapping[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Per prunable tensor, a bool mask keeping its ``1 - sparsity`` largest magnitudes."""
    masks = {}
    for name, array in arrays.items():
        if not prunable(name, array):
            continue
        flat = np.abs(array).ravel()
        drop = int(round(sparsity * flat.size))
        if drop == 0:
            masks[name] = np.ones(array.shape, dtype=bool)
            continue
        order = np.argpartition(flat, drop - 1)[:drop]  # the `drop` smallest magnitudes
        keep = np.ones(flat.size, dtype=bool)
        keep[order] = False
        masks[name] = keep.reshape(array.shape)
    return masks


def model_sparsity(arrays: Mapping[str, np.ndarray]) -> float:
    """Share of exact zeros over all prunable tensors."""
    sizes = [(int(np.count_nonzero(a == 0)), a.size) for n, a in arrays.items() if prunable(n, a)]
    return sum(z for z, _ in sizes) / max(1, sum(s for _, s in sizes))


class MagnitudePruning(Strategy):
    """``strategy`` with the global model pruned on ``schedule`` (see the module docstring)."""

    def __init__(self, strategy: Strategy, schedule: PruningSchedule) -> None:
        self.strategy = strategy
        self.schedule = schedule
        self.log = getattr(strategy, "log", None)  # the run's dropped-reply log, if the inner strategy keeps one
        self.masks: dict[str, np.ndarray] = {}
        self.history: list[tuple[int, float]] = []  # (round, sparsity reached) at each pruning round

    def _masked(self, arrays: ArrayRecord) -> ArrayRecord:
        if not self.masks:
            return arrays
        out = ArrayRecord()
        for name, array in arrays.items():
            values = array.numpy()
            if name in self.masks:
                values = np.where(self.masks[name], values, 0).astype(values.dtype)
            out[name] = Array(values)
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        target = self.schedule.sparsity_at(server_round)
        if target is not None:
            model = {k: v.numpy() for k, v in arrays.items()}
            if self.masks:
                model = {k: np.where(self.masks[k], v, 0) if k in self.masks else v for k, v in model.items()}
            self.masks = magnitude_masks(model, target)
        arrays = self._masked(arrays)
        if target is not None:
            reached = model_sparsity({k: v.numpy() for k, v in arrays.items()})
            self.history.append((server_round, reached))
            log.info("round %d: pruned to sparsity %.3f", server_round, reached)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        return (self._masked(arrays) if arrays is not None else None), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, self._masked(arrays), config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.debug("MagnitudePruning: %s, wrapping:", self.schedule)
        self.strategy.summary()
