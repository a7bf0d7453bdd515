"""Bucketing (Karimireddy, He and Jaggi, ICLR 2022, "Byzantine-robust learning on
heterogeneous datasets via bucketing"): a robust rule run on the means of random groups.

Each round the ``n`` updates are shuffled (seeded) and grouped into buckets of ``s``; a
robust rule then runs on the bucket means instead of the updates. On non-IID devices the
means of ``s`` updates are ``s`` times less spread out, so a selecting rule (Krum) loses
less of the honest signal. Two ways to group (``mode``):

- ``partition`` (the ICLR paper's bucketing): ``ceil(n / s)`` buckets of ``s`` consecutive
  shuffled updates (the last may be smaller); ``f`` attackers spoil at most ``f`` buckets.
- ``resample`` (the paper's earlier version, He, Karimireddy and Jaggi 2020, "s-replacement"):
  ``n`` buckets, bucket ``j`` the shuffled updates ``j .. j + s - 1`` (cyclically), so every
  update is in exactly ``s`` buckets; ``f`` attackers spoil up to ``s f`` buckets, but there
  are ``n`` of them, which lets Krum average more updates per selection.

Written here because neither Flower nor any library we use has it: it is a shuffle and a
grouped mean, and the only subtlety is the rule's precondition (:func:`krum_bucket_size`).
"""

from __future__ import annotations

import numpy as np


#: ``mode`` values of :func:`bucket_groups`.
BUCKET_MODES = ("partition", "resample")


def bucket_groups(n: int, bucket_size: int, seed: int, server_round: int, mode: str = "partition") -> list[np.ndarray]:
    """The buckets of round ``server_round``: arrays of indices into the round's ``n`` updates
    (``partition``: ``ceil(n / bucket_size)`` disjoint ones; ``resample``: ``n`` cyclic windows
    of ``min(bucket_size, n)``), from a permutation drawn from ``(seed, server_round)`` (the
    same seed and round give the same buckets, whatever ran before: a resumed run re-draws them)."""
    if n < 1 or bucket_size < 1 or mode not in BUCKET_MODES:
        raise ValueError(f"bucketing needs n >= 1 updates, bucket_size >= 1 and a mode in {BUCKET_MODES}, got {n}, {bucket_size}, {mode!r}")
    order = np.random.default_rng((seed, server_round)).permutation(n)
    if mode == "resample":
        return [np.take(order, range(start, start + min(bucket_size, n)), mode="wrap") for start in range(n)]
    return [order[start : start + bucket_size] for start in range(0, n, bucket_size)]


def bucket_means(updates: np.ndarray, weights: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """``(len(groups), d)``: each bucket's mean of ``updates`` ``(n, d)`` weighted by
    ``weights`` ``(n,)`` (examples, as FedAvg weights them)."""
    return np.stack([weights[g] @ updates[g] / weights[g].sum() for g in groups])


def spoiled_buckets(bucket_size: int, num_malicious_nodes: int, mode: str = "partition") -> int:
    """How many buckets ``f`` attackers can spoil: ``f`` (``partition``), ``s f`` (``resample``)."""
    return num_malicious_nodes * (bucket_size if mode == "resample" else 1)


def krum_bucket_size(n: int, bucket_size: int, num_malicious_nodes: int, mode: str = "partition") -> int:
    """The largest bucket size ``<= bucket_size`` that leaves Krum's precondition true on the
    buckets: more than ``2 f_b + 2`` buckets, ``f_b`` = :func:`spoiled_buckets` (``partition``:
    ``ceil(n / s) > 2f + 2``; ``resample``: ``n > 2 s f + 2``); 1 (no bucketing) when none does
    (with ``n <= 2f + 2`` replies Krum's own bound fails anyway and Flower's Krum still scores
    each on its nearest neighbour)."""
    for size in range(bucket_size, 1, -1):
        buckets = n if mode == "resample" else -(-n // size)
        if buckets > 2 * spoiled_buckets(size, num_malicious_nodes, mode) + 2:
            return size
    return 1
