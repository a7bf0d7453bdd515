"""Split a task's training pool across clients with flwr-datasets partitioners.

flwr-datasets partitioners work on a Hugging Face ``Dataset``; fedge hands them a
two-column table (``label``, ``idx``) built from the task's labels and reads back the
example indices of each partition, so any partitioner (IID, Dirichlet, pathological,
natural id, ...) works on any in-memory task.

flwr-datasets' ``NaturalIdPartitioner`` draws a tqdm bar ("Generating
partition_id_to_indices") with no switch to turn it off (tqdm reads ``TQDM_DISABLE``
only when it is first imported), so :func:`partition_indices` runs the partitioner
with stderr captured and passes its warnings on.

Scale: each ``load_partition`` builds a Hugging Face ``Dataset`` view (a few
milliseconds), so reading 10,000 partitions one by one takes tens of seconds. Partitions
are read back through Arrow (no per-row Python objects), and ``IidPartitioner``
(exactly that class) takes a numpy path: its partitions are ``Dataset.shard(n, i,
contiguous=True)``, consecutive runs of indices whose sizes differ by at most one, the
first ``len % n`` one longer, which is ``np.array_split`` of the index range
(``tests/test_partition.py`` checks both give the same partitions).

Start-up: :func:`partition_for` takes a config node; IID and Dirichlet nodes are split by
numpy (:mod:`fedge.simulations.numpy_partitioners`, the same partitions) without
importing flwr-datasets, which loads only for the other partitioners.
"""

from __future__ import annotations

import contextlib
import io
import warnings

from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from fedge.conf.build import ConfigError, instantiate_node
from fedge.simulations.numpy_partitioners import iid_partition, numpy_partition

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def partition_for(node: DictConfig, labels: np.ndarray, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Each client's example indices (int64) under the ``partition`` config ``node``.

    ``ConfigError`` for a node that builds no flwr-datasets ``Partitioner`` or that cannot
    split ``labels`` (shape ``(n,)``; ``groups``: natural ids, shape ``(n,)``, or ``None``).
    """
    try:
        parts = numpy_partition(node, labels)
        if parts is not None:
            return _nonempty(parts)
    except ValueError as exc:
        raise ConfigError(f"partition: {exc}") from None
    from flwr_datasets.partitioner import Partitioner

    partitioner = instantiate_node("partition", node)
    if not isinstance(partitioner, Partitioner):
        raise ConfigError(f"partition._target_ must be a flwr_datasets Partitioner, got {type(partitioner).__name__}")
    try:
        return partition_indices(labels, partitioner, groups, node.get("partition_by"))
    except ValueError as exc:
        raise ConfigError(f"partition: {exc}") from None


def partition_indices(
    labels: np.ndarray,
    partitioner: "Partitioner",
    groups: np.ndarray | None = None,
    partition_by: str | None = None,
) -> list[np.ndarray]:
    """Example indices (int64 arrays) of each of the partitioner's partitions.

    ``groups`` adds a ``group`` column (natural client ids) for natural-id partitioners.
    ``partition_by`` is the column the partitioner was configured to split by (its
    ``partition_by`` argument, ``label`` or ``group``; flwr-datasets does not expose it),
    checked here so that a missing column gets a message that says what to choose.
    """
    columns: dict[str, np.ndarray] = {"label": np.asarray(labels), "idx": np.arange(len(labels))}
    if groups is not None:
        columns["group"] = np.asarray(groups)
    wanted = partition_by
    if wanted == "group" and groups is None:
        raise ValueError(
            f"{type(partitioner).__name__} splits by natural ids, but the task has no natural ids "
            f"(writer, subject): choose partition=dirichlet, iid or pathological"
        )
    if wanted is not None and wanted not in columns:
        raise ValueError(f"{type(partitioner).__name__} splits by {wanted!r}; columns are {sorted(columns)}")
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    if type(partitioner) is IidPartitioner:
        return _nonempty(iid_partition(len(labels), partitioner.num_partitions))
    partitioner.dataset = Dataset.from_dict(columns)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("always")
            parts = [
                np.asarray(partitioner.load_partition(i).with_format("arrow")[:]["idx"].to_numpy(), dtype=np.int64)
                for i in range(partitioner.num_partitions)
            ]
    except (ValueError, IndexError) as exc:
        raise ValueError(
            f"{type(partitioner).__name__} cannot split {len(labels)} examples into the partitions "
            f"asked for ({exc}); partitions would be empty"
        ) from None
    for w in caught:  # e.g. PathologicalPartitioner: classes left unused
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return _nonempty(parts)


def _nonempty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """``parts``, or ``ValueError`` naming the empty ones (the first 20)."""
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (f" and {len(empty) - 20} more" if len(empty) > 20 else "")
        raise ValueError(f"partitions [{shown}] are empty: use fewer clients or a less skewed partition")
    return parts
