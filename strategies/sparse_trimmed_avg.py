"""SparseTrimmedAvg: coordinate-wise trimmed mean over the devices that sent each coordinate.

FedTrimmedAvg (Yin et al., 2018) made meaningful on sparse (top-k, random-k) updates: see
:mod:`fedge.strategies.delta_aggregation` for the sender rule, the ``senders / n``
scaling, norm bounding (``clip``) and anomaly screening (``min_cosine``).
"""

from __future__ import annotations

import numpy as np

from fedge.strategies.delta_aggregation import DeltaAggregation, sparse_trimmed_mean


class SparseTrimmedAvg(DeltaAggregation):
    """Per-coordinate trimmed mean of the updates, over each coordinate's senders.

    ``beta``: fraction of a coordinate's senders cut at each end, in [0, 0.5). Tuning: at
    least the expected attacker fraction (0.2 for 20% attackers); 0 = mean over senders.
    """

    def __init__(self, *args: object, beta: float = 0.2, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {beta}")
        self.beta = beta

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return sparse_trimmed_mean(deltas, self.beta)
