"""SparseMultiKrum: MultiKrum (Blanchard et al., 2017) whose scores mean something on top-k updates.

Flower's MultiKrum scores each update by the summed squared L2 distances to its
``n - f - 2`` nearest neighbours. On decoded top-k / random-k updates (exactly 0 on every
coordinate a device did not send) two devices' supports barely overlap, so a distance is
about ``||a||^2 + ||b||^2``: the smallest updates win whatever they say (measured on
digits, top-k, no attack: Krum 58 pp, MultiKrum 11 pp below FedAvg).

Here the distances are taken between the updates with every coordinate a device did not
send treated as *unknown* and filled with that coordinate's senders' median
(:func:`~fedge.strategies.delta_aggregation.fill_unsent`): two devices then differ only
where at least one sent and disagrees with the other (or with the others' consensus).
The scoring and selection are Flower's own :func:`flwr.serverapp.strategy.multikrum.select_multikrum`
run on the filled updates, so on dense updates (codecs ``none``, ``q8``: nothing is
unknown) the selection is Flower's. The selected devices' updates, as sent (unfilled),
are averaged weighted by examples, as Flower's MultiKrum does: per coordinate that is
the mean over the selected senders scaled by their share of the selected examples, as
:mod:`~fedge.strategies.delta_aggregation`'s other sparse rules scale by ``senders / n``.

Parameters are Flower's (``num_malicious_nodes`` f, ``num_nodes_to_select`` m) plus
:class:`~fedge.strategies.delta_aggregation.DeltaAggregation`'s norm bounding and screening
(off by default). Each round, every device's Krum rank is kept in ``decisions``
(``results.json`` ``robust``): ``kept`` if selected, ``excluded`` otherwise.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum

from fedge.strategies.delta_aggregation import DeltaAggregation, RobustDecision, fill_unsent


def sparse_krum_ranking(deltas: np.ndarray, num_malicious_nodes: int) -> list[int]:
    """Rows of ``deltas`` ``(n, d)`` from the lowest (most central) Krum score to the highest,
    scored by Flower's rule on :func:`~fedge.strategies.delta_aggregation.fill_unsent` updates."""
    filled = fill_unsent(deltas)
    contents = [RecordDict({"arrays": ArrayRecord({"update": Array(row)})}) for row in filled]
    ranked = select_multikrum(contents, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=len(contents))
    position = {id(content): i for i, content in enumerate(contents)}
    return [position[id(content)] for content in ranked]


class SparseMultiKrum(DeltaAggregation):
    """MultiKrum with sparse-aware scores: the ``num_nodes_to_select`` most central updates,
    averaged by examples.

    ``num_malicious_nodes`` (f): the attackers the scores tolerate (each update is scored
    on its ``n - f - 2`` nearest neighbours); ``num_nodes_to_select`` (m): updates averaged,
    1 = Krum. Tuning: f = the expected attackers, m <= n - f (more = closer to FedAvg's
    accuracy on non-IID data, less = fewer chances for an attacker to be averaged in).
    """

    def __init__(self, *args: object, num_malicious_nodes: int = 0, num_nodes_to_select: int = 1, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if num_malicious_nodes < 0 or num_nodes_to_select < 1:
            raise ValueError(f"num_malicious_nodes must be >= 0 and num_nodes_to_select >= 1, got {num_malicious_nodes}, {num_nodes_to_select}")
        self.num_malicious_nodes = num_malicious_nodes
        self.num_nodes_to_select = num_nodes_to_select

    def aggregate_deltas(self, server_round: int, nodes: list[int], deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        deltas = self._bound(server_round, nodes, deltas)
        screened = np.flatnonzero(self._screen(server_round, nodes, deltas))
        chosen = screened[self.select(server_round, [nodes[i] for i in screened], deltas[screened], self.num_nodes_to_select)]
        return self.combine(deltas[chosen], weights[chosen])

    def select(self, server_round: int, nodes: list[int], deltas: np.ndarray, count: int) -> np.ndarray:
        """Indices (into ``deltas`` ``(n, d)``) of the ``count`` lowest Krum scores, most central
        first; every device's rank recorded in :attr:`decisions`."""
        ranking = sparse_krum_ranking(deltas, self.num_malicious_nodes)
        for rank, i in enumerate(ranking):
            action = "kept" if rank < count else "excluded"
            reason = f"Krum rank {rank + 1} of {len(ranking)} (the {count} lowest scores are selected, f = {self.num_malicious_nodes})"
            self.decisions.append(RobustDecision(server_round, nodes[i], action, reason))
        return np.array(ranking[:count], dtype=np.int64)

    def combine(self, deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.asarray(weights @ deltas / weights.sum())
