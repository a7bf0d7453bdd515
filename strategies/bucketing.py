"""Bucketing (Karimireddy, He and Jaggi, ICLR 2022, "Byzantine-robust learning on
heterogeneous datasets via bucketing"): a robust rule run on the means of random groups.

Each round the ``n`` updates are shuffled (seeded) and cut into ``ceil(n / s)`` buckets of
``s`` consecutive updates (the last one may be smaller); a robust rule then runs on the
bucket means instead of the updates. On non-IID devices the means of ``s`` updates are
``s`` times less spread out, so a selecting rule (Krum) loses less of the honest signal,
while ``f`` attackers still contaminate at most ``f`` buckets.

Written here because neither Flower nor any library we use has it: it is a shuffle and a
grouped mean, and the only subtlety is the rule's precondition (:func:`krum_bucket_size`).
"""

from __future__ import annotations

import numpy as np


def bucket_groups(n: int, bucket_size: int, seed: int, server_round: int) -> list[np.ndarray]:
    """The buckets of round ``server_round``: ``ceil(n / bucket_size)`` arrays of indices into
    the round's ``n`` updates, from a permutation drawn from ``(seed, server_round)`` (the same
    seed and round give the same buckets, whatever ran before: a resumed run re-draws them)."""
    if n < 1 or bucket_size < 1:
        raise ValueError(f"bucketing needs n >= 1 updates and bucket_size >= 1, got {n}, {bucket_size}")
    order = np.random.default_rng((seed, server_round)).permutation(n)
    return [order[start : start + bucket_size] for start in range(0, n, bucket_size)]


def bucket_means(updates: np.ndarray, weights: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """``(len(groups), d)``: each bucket's mean of ``updates`` ``(n, d)`` weighted by
    ``weights`` ``(n,)`` (examples, as FedAvg weights them)."""
    return np.stack([weights[g] @ updates[g] / weights[g].sum() for g in groups])


def krum_bucket_size(n: int, bucket_size: int, num_malicious_nodes: int) -> int:
    """The largest bucket size ``<= bucket_size`` that leaves Krum's precondition true on the
    buckets: ``ceil(n / s) > 2f + 2`` (f attackers can spoil at most f buckets); 1 (no
    bucketing) when none does (with ``n <= 2f + 2`` replies Krum's own bound fails anyway and
    Flower's Krum still scores each on its nearest neighbour)."""
    needed = 2 * num_malicious_nodes + 3
    for size in range(bucket_size, 1, -1):
        if -(-n // size) >= needed:
            return size
    return 1
