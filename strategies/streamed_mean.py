"""FedAvg's weighted mean, folded in one reply at a time (server memory at 10,000 replies).

Flower's ``FedAvg.aggregate_train`` averages replies that each hold a dense
``ArrayRecord``: a round where all 10,000 devices reply keeps 10,000 decoded deltas and
10,000 dense models alive at once (about 3 GB for a 38k-weight CNN), though each reply
arrived as a few kilobytes of top-k. :class:`~fedge.strategies.compressed.CompressedStrategy`
instead hands such a strategy its replies with *empty* ``ArrayRecord``s (it still checks
them and aggregates their metrics, its own way) and computes the arrays here, decoding
each compressed reply only when it is folded in; at most one dense reply exists at a time.

The numbers are Flower's: :func:`weighted_mean` is ``aggregate_arrayrecords``
(``flwr.serverapp.strategy.strategy_utils``, flwr 1.41) step for step: the weights read
from each reply's one MetricRecord, ``total = sum(weights)``, factors ``w / total``, the
first reply times its factor, then ``+=`` each next reply times its factor, in reply order,
in the arrays' own dtype. So the result is bit-identical (the default run's pinned weights
and ``tests/test_streamed_mean.py`` check it).

Only strategies whose ``aggregate_train`` *is* ``FedAvg.aggregate_train`` (FedAvg,
FedProx) take this path (:func:`streams_weighted_mean`); the others (FedAdam and the
FedOpt family, FedAvgM, Krum, median, trimmed mean, DP wrappers) need every update or do
more after the mean, and keep the dense path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import FedAvg, Strategy

from fedge.strategies.record_access import metric_records


def streams_weighted_mean(strategy: Strategy) -> bool:
    """Whether ``strategy`` aggregates arrays exactly as ``FedAvg.aggregate_train`` (not overridden)."""
    return isinstance(strategy, FedAvg) and type(strategy).aggregate_train is FedAvg.aggregate_train


def reply_weights(replies: Iterable[Message], weighted_by_key: str) -> list[float]:
    """The weight FedAvg reads from each reply without an error: its one MetricRecord's ``weighted_by_key``."""
    return [
        cast(float, metric_records(reply.content)[0][weighted_by_key])
        for reply in replies
        if not reply.has_error()
    ]


def weighted_mean(arrays: Iterable[Mapping[str, np.ndarray]], weights: list[float]) -> ArrayRecord:
    """``sum_i weights[i] / sum(weights) * arrays[i]``, as Flower's ``aggregate_arrayrecords``
    computes it; ``arrays`` is consumed one mapping at a time (pass a generator to keep one
    reply in memory), and must yield exactly ``len(weights)`` mappings."""
    total_weight = sum(weights)
    weight_factors = [w / total_weight for w in weights]
    aggregated: dict[str, np.ndarray] = {}
    # ``value * weight`` goes into one buffer per tensor, reused reply after reply (the
    # same numbers: the buffer has the product's own dtype); nothing of ``arrays`` is written
    scratch: dict[str, np.ndarray] = {}
    for record, weight in zip(arrays, weight_factors, strict=True):
        for key, value in record.items():
            if key not in aggregated:
                aggregated[key] = value * weight
                continue
            buffer = scratch.get(key)
            if buffer is None or buffer.shape != np.shape(value) or buffer.dtype != np.result_type(value, weight):
                aggregated[key] += value * weight  # first fold of this tensor (or another layout): a new buffer
                scratch[key] = np.empty(np.shape(value), np.result_type(value, weight))
            else:
                aggregated[key] += np.multiply(value, weight, out=buffer)
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in aggregated.items()})
