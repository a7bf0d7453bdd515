"""SparseKrum: Krum (Blanchard et al., 2017) whose scores mean something on top-k updates.

:class:`~fedge.strategies.sparse_multikrum.SparseMultiKrum` selecting one update, as
Flower's Krum is its MultiKrum with ``num_nodes_to_select`` = 1: the round's update is
the one device's update (as sent) with the lowest Krum score, the distances taken with
the coordinates a device did not send filled with their senders' median (unknown, not 0).
On dense updates the selection is Flower's Krum's.
"""

from __future__ import annotations

from fedge.strategies.sparse_multikrum import SparseMultiKrum


class SparseKrum(SparseMultiKrum):
    """Krum with sparse-aware scores (``num_malicious_nodes`` f: each update is scored on its
    ``n - f - 2`` nearest neighbours). Tuning: f = the expected attackers; on non-IID data
    Krum keeps one device's data a round (MultiKrum with m > 1 loses less accuracy)."""

    def __init__(self, *args: object, num_malicious_nodes: int = 0, **kwargs: object) -> None:
        super().__init__(*args, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1, **kwargs)
