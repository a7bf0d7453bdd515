"""A device's local examples from a file: ``.npz`` (arrays ``x``, ``y``) or CSV.

CSV: one example per row, a header row, the label in the column named ``label`` (or
``y``), every other column a numeric feature. Features are float32; when the task
(or the caller) gives an ``input_shape``, each row is reshaped to it, e.g. a digits
row of 64 pixels to ``(1, 8, 8)``. Labels are int64.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedge.tasks.base import Split

LABEL_COLUMNS = ("label", "y")


def load_local_data(path: str | Path, input_shape: Sequence[int] | None = None) -> Split:
    """The examples in ``path``; ``ValueError`` names what is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _from_npz(path)
    elif suffix == ".csv":
        x, y = _from_csv(path)
    else:
        raise ValueError(f"data file {path}: expected .npz (arrays x, y) or .csv, got {suffix or 'no suffix'}")
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        per_example = int(np.prod(shape))
        if len(x) and x[0].size != per_example:
            raise ValueError(f"data file {path}: examples have {x[0].size} values, input shape {shape} needs {per_example}")
        x = x.reshape((len(x), *shape))
    if len(x) == 0:
        raise ValueError(f"data file {path} holds no examples")
    return Split(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64))


def _from_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("x", "y") if k not in data.files]
        if missing:
            raise ValueError(f"data file {path}: missing arrays {missing} (found {data.files})")
        x, y = data["x"], data["y"]
    if len(x) != len(y):
        raise ValueError(f"data file {path}: x has {len(x)} examples but y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"data file {path}: labels y must be integers, got dtype {y.dtype}")
    return x, y


def _from_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"data file {path} is empty")
        names = [h.strip() for h in header]
        label = next((names.index(c) for c in LABEL_COLUMNS if c in names), None)
        if label is None:
            raise ValueError(f"data file {path}: no label column (one of {LABEL_COLUMNS}) in the header {names}")
        rows = [row for row in reader if row]
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"data file {path}: non-numeric value ({exc})") from None
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"data file {path}: every row must have {len(names)} values")
    y = table[:, label]
    if not np.all(np.mod(y, 1) == 0):
        raise ValueError(f"data file {path}: labels in column {names[label]!r} must be integers")
    return np.delete(table, label, axis=1), y.astype(np.int64)
