"""NormBoundedFedAvg: FedAvg of updates each clipped to a bound (Sun et al., 2019).

The weighted mean of :mod:`fedge.strategies.delta_aggregation`'s bounded (``clip``:
fixed or adaptive from the median norm) and screened (``min_cosine``) updates. Zeros a
sparse update did not send count as zeros, exactly as in FedAvg: the mean needs no
sparse rule. Defaults to ``clip=median`` (bound = the round's median update norm).
"""

from __future__ import annotations

import numpy as np

from fedge.strategies.delta_aggregation import DeltaAggregation


class NormBoundedFedAvg(DeltaAggregation):
    """Example-weighted mean of norm-bounded updates."""

    def __init__(self, *args: object, clip: str = "median", **kwargs: object) -> None:
        super().__init__(*args, clip=clip, **kwargs)  # type: ignore[arg-type]

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.asarray((weights[:, None] * deltas).sum(axis=0) / weights.sum())
