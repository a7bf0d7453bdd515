"""SparseKrum: Krum (Blanchard et al., 2017) meaningful on top-k updates.

:class:`~fedge.strategies.sparse_multikrum.SparseMultiKrum` selecting one update, as
Flower's Krum is its MultiKrum with ``num_nodes_to_select`` = 1: Flower's Krum on updates
whose unsent coordinates are filled with their senders' median (unknown, not 0), x each
coordinate's sender share. The round's update carries the most central device's values
where it sent and the senders' median elsewhere. On dense updates Flower's Krum.
"""

from __future__ import annotations

from fedge.strategies.sparse_multikrum import SparseMultiKrum


class SparseKrum(SparseMultiKrum):
    """Krum with sparse-aware scores (``num_malicious_nodes`` f: each update is scored on its
    ``n - f - 2`` nearest neighbours). Tuning: f = the expected attackers."""

    def __init__(self, *args: object, num_malicious_nodes: int = 0, **kwargs: object) -> None:
        super().__init__(*args, num_malicious_nodes=num_malicious_nodes, num_nodes_to_select=1, **kwargs)  # type: ignore[arg-type]
