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


#: Share of a round's devices the default graph is sized to lose (before or after masking).
DEFAULT_DROPOUT = 0.3
#: Largest chance, by the union bound, that the default graph leaves some secret unrecoverable.
DEFAULT_FAILURE = 1e-3


def neighbour_count(n: int, dropout: float = DEFAULT_DROPOUT, failure: float = DEFAULT_FAILURE) -> int:
    """The smallest even ``k`` (or ``n - 1``: the complete graph) that survives a ``dropout`` share of devices.

    With threshold ``t = k // 2 + 1`` (:func:`fedge.protos.secagg.params.default_threshold`),
    a round is lost when some device keeps fewer than ``t`` of its ``k`` neighbours, for
    devices that vanish independently with probability ``dropout``;
    :func:`failure_chance` bounds that chance and ``k`` is the smallest degree that
    brings it to ``failure`` or below (or the complete graph, whatever its chance).

    ``k`` grows with ``log n`` (the union bound over ``n`` devices), and steeply with
    ``dropout`` as it nears 1/2 (``t`` must stay above ``k / 2``). Defaults (0.3,
    1e-3): n = 10 -> 9 (complete), 100 -> 99 (complete: chance 2.2e-5; no sparser
    graph's union bound is below 2.6e-3), 1,000 -> 134, 10,000 -> 160; with
    ``dropout=0.1``: 100 -> 20 (7.2e-4), 1,000 -> 24. Tuning: set ``secagg.dropout`` to the
    share of sampled devices that really vanish mid-round (slow links, battery, users
    walking away): too low and rounds get abandoned, too high and every device pays
    64 uplink bytes per extra neighbour (a 48-byte sealed share pair, a 16-byte revealed
    share) and the server ``k`` PRG expansions per dropped device.
    """
    if n < 2:
        raise SecAggError(f"secure aggregation needs at least 2 participants, got {n}")
    if not (0.0 <= dropout < 0.5 and 0.0 < failure < 1.0):
        raise SecAggError(f"dropout must be in [0, 0.5) and failure in (0, 1), got {dropout} and {failure}")
    for k in range(2, n - 1, 2):
        if failure_chance(n, k, dropout) <= failure:
            return k
    return n - 1


def failure_chance(n: int, k: int, dropout: float) -> float:
    """An upper bound on the chance that some device keeps fewer than ``t = k // 2 + 1`` of
    its ``k`` neighbours, devices vanishing independently with probability ``dropout``.

    Sparse graph: the union bound, ``n * P[Binomial(k, dropout) > k - t]``. Complete graph
    (``k = n - 1``): exact, ``P[Binomial(n, dropout) > k - t]``: every device's neighbours
    are all the others, so one is short exactly when more than ``k - t`` devices
    vanish (a device that stays sees them all gone; the union bound would count the same
    event ``n`` times: 1.6e-3 instead of 2.2e-5 at n = 100, dropout 0.3).
    """
    t = k // 2 + 1
    if k == n - 1:
        return _lost_chance(n, n - (k - t + 1) + 1, dropout)  # P[more than k - t of n gone]
    return min(1.0, n * _lost_chance(k, t, dropout))


def _lost_chance(k: int, t: int, dropout: float) -> float:
    """``P[fewer than t of k neighbours stay]``, each gone with probability ``dropout``."""
    return sum(math.comb(k, gone) * dropout**gone * (1 - dropout) ** (k - gone) for gone in range(k - t + 1, k + 1))


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
