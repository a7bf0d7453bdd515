"""scikit-learn's digits and its stratified hold-out, without importing scikit-learn.

Why by hand: ``import sklearn`` loads scipy, pandas and pyarrow, about 1.8 CPU-seconds
(close to ``import torch``), to read a 1,797-row CSV and draw one stratified split; the
default ``fedge-sim`` run pays it at start-up, in the main process, before round 1.
scikit-learn stays the source of the data and of the rule; this module reads the same
file and makes the same random draws:

- :func:`digits_csv`: ``sklearn/datasets/data/digits.csv.gz`` from the installed
  scikit-learn wheel (found with ``importlib.util.find_spec``, which does not import the
  package), parsed by ``np.loadtxt`` as ``load_digits`` parses it;
- :func:`stratified_split`: ``train_test_split(..., test_size=f, random_state=seed,
  stratify=y)`` (``StratifiedShuffleSplit``, scikit-learn 1.x): ``ceil(f * n)`` test rows,
  per-class counts by the approximate multivariate-hypergeometric mode with random tie
  breaks, one permutation per class, then one of each side, all from
  ``np.random.RandomState(seed)`` in scikit-learn's order.

``tests/test_sklearn_free.py`` checks both against scikit-learn itself (many seeds,
fractions and label sets), so a scikit-learn release that changed either shows there.
"""

from __future__ import annotations

import gzip
import importlib.util
from math import ceil
from pathlib import Path

import numpy as np


def digits_csv() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s ``images`` ``(1797, 8, 8)`` float64 (0..16) and ``target`` ``(1797,)`` int."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("task=digits reads scikit-learn's digits: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as rows:
        data = np.loadtxt(rows, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices (int64) of ``train_test_split(test_size=test_fraction,
    random_state=seed, stratify=y)``; ``y``: labels, shape ``(n,)``."""
    y = np.asarray(y)
    n_test = ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise ValueError(f"classes with fewer than 2 examples cannot be stratified: {classes[class_counts < 2].tolist()}")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"train ({n_train}) and test ({n_test}) rows must each cover the {len(classes)} classes")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for members, count, n, t in zip(class_indices, class_counts, n_i, t_i):
        shuffled = members.take(rng.permutation(count), mode="clip")
        train.append(shuffled[:n])
        test.append(shuffled[n : n + t])
    return (
        rng.permutation(np.concatenate(train)).astype(np.int64, copy=False),
        rng.permutation(np.concatenate(test)).astype(np.int64, copy=False),
    )


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per class out of ``n_draws`` (scikit-learn's ``_approximate_mode``; ties broken by ``rng``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
