"""The round's neighbour graph: random k-regular, so a device talks to O(log n) peers.

SecAgg+ (Bell et al. 2020) replaces SecAgg's complete graph by a sparse random one: a
device masks with, and shares its secrets among, ``k`` neighbours only, so its cost
grows with ``k ~ log n`` instead of ``n``. The graph is a Harary graph over a seeded
random permutation of the participants (as in Bell et al.'s construction): the node at
position ``i`` neighbours positions ``i +- 1 .. i +- k/2`` (mod n). Everyone derives the
same graph from the round's ``graph_seed``; nobody can pick their neighbours.

Written by hand: it is a dozen lines over the PRG (:mod:`.prg`), and the graph must be
the same on every device whatever its numpy version (numpy's generators promise no
stream stability across versions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedge.protos.secagg import prg
from fedge.protos.secagg.errors import SecAggError


def neighbour_count(n: int, factor: float = 3.0) -> int:
    """A default ``k`` for ``n`` participants: ``factor * log2(n)`` rounded up to even, at most ``n - 1``.

    Tuning: larger ``factor`` tolerates more dropouts and a larger colluding share of
    devices, at cost linear in ``k`` (keys, shares, pairwise masks per device).
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 participants, got {n}")
    k = 2 * math.ceil(factor * math.log2(n) / 2)
    return min(n - 1, max(2, k))


def check_degree(n: int, k: int) -> None:
    if not 1 <= k <= n - 1:
        raise SecAggError(f"neighbours k={k} must be in 1..{n - 1} for {n} participants")
    if k % 2 and k != n - 1:
        raise SecAggError(f"neighbours k={k} must be even (or n - 1 = {n - 1}: the complete graph)")


def neighbours(participants: Sequence[int], k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Each participant's ``k`` neighbours (ascending node ids); symmetric, no self-loops."""
    nodes = list(participants)
    n = len(nodes)
    check_degree(n, k)
    if k == n - 1:
        return {u: tuple(v for v in nodes if v != u) for u in nodes}
    keys = prg.words(seed, n).astype(np.uint64) << np.uint64(32) | np.arange(n, dtype=np.uint64)
    order = [nodes[i] for i in np.argsort(keys)]  # position -> node
    out: dict[int, tuple[int, ...]] = {}
    for position, node in enumerate(order):
        peers = {order[(position + d) % n] for d in range(1, k // 2 + 1)}
        peers |= {order[(position - d) % n] for d in range(1, k // 2 + 1)}
        out[node] = tuple(sorted(peers))
    return out
