"""SparseBulyan: Bulyan (El Mhamdi et al., 2018) meaningful on top-k updates.

Flower's Bulyan, stage by stage, on decoded updates whose unsent coordinates are unknown
rather than 0 (see :mod:`fedge.strategies.delta_aggregation`):

1. selection: theta = n - 2f updates by sparse-aware MultiKrum
   (:meth:`~fedge.strategies.sparse_multikrum.SparseMultiKrum.select`: Flower's Krum
   scores on updates whose unsent coordinates are filled with their senders' median);
2. per coordinate, over the selected devices that *sent* it (``c`` of theta): the mean of
   the ``ceil(c x beta / theta)`` values closest to their median, beta = theta - 2f
   (Flower's beta when ``c`` = theta), scaled by ``c / theta``
   (:func:`~fedge.strategies.delta_aggregation.sparse_closest_mean`).

On dense updates (every coordinate sent) this is Flower's Bulyan. Like Flower's it needs
n >= 4f + 3 replies: with fewer the round is skipped (the model is kept) and the reason
recorded. Unweighted, as Flower's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from fedge.strategies.delta_aggregation import RobustDecision, sender_masks, sparse_closest_mean
from fedge.strategies.sparse_multikrum import SparseMultiKrum

log = logging.getLogger(__name__)


class SparseBulyan(SparseMultiKrum):
    """Bulyan with sparse-aware selection and per-coordinate sender-only trimming.

    ``num_malicious_nodes`` (f): tolerated attackers; needs n >= 4f + 3 replies a round.
    Tuning: f = the expected attackers (f = 1 with 7-10 devices; 2 needs 11)."""

    def __init__(self, *args: object, num_malicious_nodes: int = 0, **kwargs: object) -> None:
        super().__init__(*args, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1, **kwargs)

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
        deltas = self._bound(server_round, nodes, deltas)
        screened = np.flatnonzero(self._screen(server_round, nodes, deltas))
        theta = max(1, len(screened) - 2 * f)
        chosen = deltas[screened[self.select(server_round, [nodes[i] for i in screened], deltas[screened], theta)]]
        beta = max(1, theta - 2 * f)
        senders = sender_masks(chosen).sum(axis=0)
        keep = np.maximum(1, -(-senders * beta // theta))  # ceil(c x beta / theta), integers: exact at c = theta
        return sparse_closest_mean(chosen, keep)
