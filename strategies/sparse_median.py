"""SparseMedian: coordinate-wise median over the devices that sent each coordinate.

FedMedian (Yin et al., 2018) made meaningful on sparse (top-k, random-k) updates: see
:mod:`fedge.strategies.delta_aggregation` for the sender rule, the ``senders / n``
scaling, norm bounding (``clip``) and anomaly screening (``min_cosine``). Unweighted,
as Flower's FedMedian. Breakdown: fewer than half of a coordinate's senders.
"""

from __future__ import annotations

import numpy as np

from fedge.strategies.delta_aggregation import DeltaAggregation, sparse_median


class SparseMedian(DeltaAggregation):
    """Per-coordinate median of the updates, over each coordinate's senders."""

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return sparse_median(deltas)
