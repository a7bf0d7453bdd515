"""Guarded aggregation: a round whose aggregate cannot be trusted is abandoned, not applied.

Flower's ``Strategy.start`` keeps the previous global model when ``aggregate_train``
returns ``None`` arrays; :func:`guarded_aggregate` builds on that. It runs the inner
strategy's aggregation and returns ``None`` (with the reason) when it raises (division
by zero, ``InconsistentMessageReplies``, ...) or returns a non-finite aggregate. Stateful
strategies (FedAdam's moments, FedAvgM's momentum, DP wrappers' clipping norm) change
their state while aggregating, so the guard snapshots the strategy tree first and puts
it back when the round is abandoned: otherwise a NaN moment would poison every later
round. The snapshot deep-copies every attribute that is not itself a strategy (a few
model-sized arrays for the FedOpt family) and recurses into wrapped strategies, keeping
their identity.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

log = logging.getLogger(__name__)


@dataclass
class StrategySnapshot:
    """The attributes of a strategy and of every strategy it wraps, as they were."""

    strategy: Strategy
    attributes: dict[str, Any]
    inner: list[StrategySnapshot]

    @classmethod
    def take(cls, strategy: Strategy) -> StrategySnapshot:
        attributes: dict[str, Any] = {}
        inner: list[StrategySnapshot] = []
        for name, value in vars(strategy).items():
            if isinstance(value, Strategy):
                attributes[name] = value
                inner.append(cls.take(value))
            else:
                attributes[name] = copy.deepcopy(value)
        return cls(strategy, attributes, inner)

    def restore(self) -> None:
        state = vars(self.strategy)
        state.clear()
        state.update(self.attributes)
        for snapshot in self.inner:
            snapshot.restore()


def is_finite(arrays: ArrayRecord) -> bool:
    """Whether every floating-point value of every array is finite."""
    for array in arrays.values():
        value = array.numpy()
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            return False
    return True


def finite_metrics(metrics: MetricRecord) -> bool:
    """Whether every metric (scalars and list entries) is finite."""
    for value in metrics.values():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return False
    return True


def guarded_aggregate(
    strategy: Strategy, aggregate: Callable[[], tuple[ArrayRecord | None, MetricRecord | None]]
) -> tuple[ArrayRecord | None, MetricRecord | None, str | None]:
    """``(arrays, metrics, None)``, or ``(None, None, reason)`` with ``strategy``'s state restored.

    ``aggregate`` runs the inner strategy's ``aggregate_train``. Non-finite *metrics*
    alone do not abandon the round: they are discarded (``metrics`` = None) and logged.
    """
    snapshot = StrategySnapshot.take(strategy)
    try:
        arrays, metrics = aggregate()
    except Exception as exc:  # noqa: BLE001 - any failure of the inner strategy abandons the round
        snapshot.restore()
        return None, None, f"{type(strategy).__name__} raised {type(exc).__name__}: {exc}"
    if arrays is not None and not is_finite(arrays):
        snapshot.restore()
        return None, None, f"{type(strategy).__name__} produced a non-finite aggregate"
    if metrics is not None and not finite_metrics(metrics):
        log.warning("%s produced non-finite aggregated metrics; discarded", type(strategy).__name__)
        metrics = None
    return arrays, metrics, None

