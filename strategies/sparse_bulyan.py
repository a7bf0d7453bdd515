"""SparseBulyan: Bulyan (El Mhamdi et al., 2018) meaningful on top-k updates.

Flower's Bulyan, unchanged, on updates whose unsent coordinates are *unknown*, filled
with their senders' median (see :mod:`fedge.strategies.sparse_multikrum`):

1. selection: theta = n - 2f updates by Flower's MultiKrum scores on the filled updates
   (:meth:`~fedge.strategies.sparse_multikrum.SparseMultiKrum.rank`), filled as there
   (``fill``: from every update, or from the n - f lowest-scored);
2. per coordinate, the mean of the beta = theta - 2f selected values closest to their
   median: Flower's :func:`~flwr.serverapp.strategy.bulyan.aggregate_n_closest_weights`;
3. x each coordinate's sender share (among the updates that fill).

On dense updates (every coordinate sent) this is Flower's Bulyan. Like Flower's it needs
n >= 4f + 3 replies: with fewer the round is skipped (the model is kept) and the reason
recorded. Unweighted, as Flower's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights

from fedge.strategies.delta_aggregation import RobustDecision, fill_unsent, sender_share
from fedge.strategies.sparse_multikrum import SparseMultiKrum

log = logging.getLogger(__name__)


class SparseBulyan(SparseMultiKrum):
    """Bulyan on updates whose unsent coordinates are filled with their senders' median.

    ``num_malicious_nodes`` (f): tolerated attackers; needs n >= 4f + 3 replies a round.
    Tuning: f = the expected attackers (f = 1 with 7-10 devices; 2 needs 11)."""

    def __init__(self, *args: object, num_malicious_nodes: int = 0, **kwargs: object) -> None:
        super().__init__(*args, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1, **kwargs)  # type: ignore[arg-type]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        needed = 4 * self.num_malicious_nodes + 3
        answered = sum(not reply.has_error() for reply in replies)
        if answered < needed:
            reason = f"{answered} replies, Bulyan needs 4f + 3 = {needed}: round skipped, the model is kept"
            log.warning("round %d: %s", server_round, reason)
            self.decisions.append(RobustDecision(server_round, -1, "excluded", reason))
            return None, None
        return super().aggregate_train(server_round, replies)

    def aggregate_deltas(self, server_round: int, nodes: list[int], deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        f = self.num_malicious_nodes
        deltas, _, nodes = self.bound_and_screen(server_round, nodes, deltas, weights)
        theta = max(1, len(deltas) - 2 * f)
        ranking = self.rank(server_round, nodes, deltas, theta)
        trusted = self.trusted(ranking, theta)
        chosen = fill_unsent(deltas[ranking[:theta]], deltas[trusted])
        (closest,) = aggregate_n_closest_weights([np.median(chosen, axis=0)], [[row] for row in chosen], max(1, theta - 2 * f))
        return np.asarray(closest) * sender_share(deltas[trusted])
