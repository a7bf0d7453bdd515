"""flwr-datasets' IID and Dirichlet partitions computed by numpy, chosen from a config node.

Why by hand: every module of ``flwr_datasets.partitioner`` imports Hugging Face
``datasets`` (pyarrow, pandas), and the package ``flwr_datasets`` also imports its
plotting helpers (seaborn, scipy, matplotlib): about 4 CPU-seconds, over a second of a
quiet machine's start-up, before the default run (``partition: dirichlet``) could split
1,797 labels. The config keeps naming flwr-datasets' classes (``_target_``); when the
node names ``IidPartitioner`` or ``DirichletPartitioner`` with arguments this module
knows, :func:`numpy_partition` returns the same partitions without importing
flwr-datasets, and any other node (other partitioners, unknown arguments, per-client
alpha lists, another ``partition_by`` column) returns ``None`` for the flwr-datasets path.

The same partitions, bit for bit (``tests/test_partition.py`` compares them with
flwr-datasets' for several sizes, alphas and seeds):

- IID: ``Dataset.shard(n, i, contiguous=True)``: consecutive runs of indices whose
  sizes differ by at most one, the first ``len % n`` one longer: ``np.array_split``.
- Dirichlet (flwr-datasets 0.6 ``DirichletPartitioner``): one ``numpy`` Generator seeded
  with ``seed``; for each class in sorted order one ``dirichlet(alpha)`` draw, the class's
  indices split at ``int(cumsum(proportions) * count)``; redrawn (with a warning, at most
  10 times) while a partition is below ``min_partition_size``; each partition then
  shuffled by the same Generator, in partition order. The Generator calls, their order and
  the float operations are flwr-datasets' own, so the draws are the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

IID = "flwr_datasets.partitioner.IidPartitioner"
DIRICHLET = "flwr_datasets.partitioner.DirichletPartitioner"
#: The Dirichlet arguments this module reproduces, with flwr-datasets' defaults.
DIRICHLET_DEFAULTS: dict[str, Any] = {
    "min_partition_size": 10,
    "self_balancing": False,
    "shuffle": True,
    "seed": 42,
}
#: Redraws flwr-datasets allows before it gives up on ``min_partition_size``.
MAX_REDRAWS = 10


def numpy_partition(node: Mapping[str, Any], labels: np.ndarray) -> list[np.ndarray] | None:
    """Each partition's example indices (int64), or ``None`` when flwr-datasets must build them.

    ``node`` is the ``partition`` config (``_target_`` and the partitioner's arguments);
    ``labels`` the training pool's labels, shape ``(n,)``. Raises ``ValueError`` where
    flwr-datasets would (no partitions, more partitions than examples, bad alpha,
    ``min_partition_size`` not met after 10 redraws).
    """
    args = {str(k): v for k, v in node.items() if k != "_target_"}
    target = node.get("_target_")
    if target == IID and set(args) == {"num_partitions"}:
        return iid_partition(len(labels), _count(args["num_partitions"]))
    if target == DIRICHLET and {"num_partitions", "partition_by", "alpha"} <= set(args) <= {
        "num_partitions", "partition_by", "alpha", *DIRICHLET_DEFAULTS
    }:
        alpha = args["alpha"]
        if args["partition_by"] != "label" or isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            return None  # other columns and per-partition alpha lists: flwr-datasets
        options = {**DIRICHLET_DEFAULTS, **args}
        return dirichlet_partition(
            labels,
            _count(options["num_partitions"]),
            float(alpha),
            min_partition_size=int(options["min_partition_size"]),
            self_balancing=bool(options["self_balancing"]),
            shuffle=bool(options["shuffle"]),
            seed=None if options["seed"] is None else int(options["seed"]),
        )
    return None


def iid_partition(examples: int, partitions: int) -> list[np.ndarray]:
    """``IidPartitioner(partitions)`` over ``examples`` rows: ``np.array_split`` of the index range."""
    if partitions <= 0:
        raise ValueError("the number of partitions needs to be greater than zero")
    return np.array_split(np.arange(examples, dtype=np.int64), partitions)


def dirichlet_partition(
    labels: np.ndarray,
    partitions: int,
    alpha: float,
    *,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    shuffle: bool = True,
    seed: int | None = 42,
) -> list[np.ndarray]:
    """``DirichletPartitioner(partitions, "label", alpha, ...)``'s partitions of ``labels``.

    ``alpha``: concentration of each class's split across partitions (smaller = more
    label skew); the same for every partition.
    """
    if partitions <= 0:
        raise ValueError("the number of partitions needs to be greater than zero")
    if not alpha > 0:
        raise ValueError(f"alpha must be greater than zero, got {alpha}")
    labels = np.asarray(labels)
    if partitions > len(labels):
        raise ValueError("the number of partitions needs to be smaller than the number of examples")
    rng = np.random.default_rng(seed=seed)
    alphas = np.array([alpha], dtype=float).repeat(partitions)
    average = len(labels) / partitions
    by_class = [np.nonzero(labels == k)[0] for k in np.unique(labels)]
    for attempt in range(MAX_REDRAWS + 1):
        pieces: list[list[np.ndarray]] = [[] for _ in range(partitions)]
        sizes = np.zeros(partitions, dtype=np.int64)
        for members in by_class:
            proportions = rng.dirichlet(alphas)
            if self_balancing:
                proportions[sizes > average] = 0
                total = sum(proportions.tolist())  # left to right, as flwr-datasets sums
                proportions = np.array([p / total for p in proportions.tolist()])
            cuts = (np.cumsum(proportions) * len(members)).astype(int)[:-1]
            for piece, split in zip(pieces, np.split(members, cuts)):
                piece.append(split)
            sizes += np.diff(cuts, prepend=0, append=len(members))
        if sizes.min() >= min_partition_size:
            break
        warnings.warn(
            f"min_partition_size ({min_partition_size}) not met for alpha {alpha} after {attempt} "
            "redraws from the Dirichlet distribution; drawing again (a larger alpha or a smaller "
            "min_partition_size avoids this)",
            stacklevel=2,
        )
        if attempt == MAX_REDRAWS:
            raise ValueError(
                f"min_partition_size ({min_partition_size}) not met after {MAX_REDRAWS} redraws: "
                "raise alpha or lower min_partition_size"
            )
    parts = [np.concatenate(piece).astype(np.int64, copy=False) for piece in pieces]
    if shuffle:
        for part in parts:
            rng.shuffle(part)
    return parts


def _count(value: object) -> int:
    """A partition count from the config (an int; anything else is a ``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"num_partitions must be an integer, got {value!r}")
    return value
