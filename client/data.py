"""A device's local examples from a file: ``.npz`` (arrays ``x``, ``y``) or CSV.

Expected layout (``fedge-client --data``):

- ``.npz``: array ``x`` of shape ``(N, *input_shape)`` (or ``(N, prod(input_shape))``,
  reshaped), numeric; array ``y`` of shape ``(N,)``, integer labels.
- CSV: a header row, then one example per row; the label in the column named ``label``
  (or ``y``), every other column a numeric feature, ``prod(input_shape)`` of them, in
  the order the task flattens an example (C-order), e.g. 64 pixel columns for digits'
  ``(1, 8, 8)``.

Labels must lie in ``0..num_classes-1`` of the task; no feature may be NaN or infinite.
Every violation raises ``ValueError`` naming the file and the array or column, so
``fedge-client`` exits with status 2 before it joins the federation. Features are
returned as float32, labels as int64.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedge.tasks.base import Split

LABEL_COLUMNS = ("label", "y")


def load_local_data(path: str | Path, input_shape: Sequence[int] | None = None, num_classes: int = 0) -> Split:
    """The examples in ``path``; ``ValueError`` names what is missing or malformed.

    ``input_shape``: one example's shape (None: as stored); ``num_classes``: labels must
    be below it (0: not checked)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        x, y = _from_npz(path)
        columns: list[str] | None = None
        label = "array y"
    elif suffix == ".csv":
        x, y, columns, label = _from_csv(path)
    else:
        raise ValueError(f"data file {path}: expected .npz (arrays x, y) or .csv, got {suffix or 'no suffix'}")
    if len(x) == 0:
        raise ValueError(f"data file {path} holds no examples")
    if y.ndim != 1:
        raise ValueError(f"data file {path}: {label} must have shape (N,), got {y.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"data file {path}: array x must be numeric, got dtype {x.dtype}")
    _check_finite(path, x, columns)
    if num_classes > 0 and (bad := np.flatnonzero((y < 0) | (y >= num_classes))).size:
        raise ValueError(
            f"data file {path}: {label} holds {y[bad[0]]} (example {bad[0]}); the task's labels are 0..{num_classes - 1}"
            + (f" ({bad.size} examples out of range)" if bad.size > 1 else "")
        )
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        per_example = int(np.prod(shape))
        if x[0].size != per_example:
            what = f"{x.shape[1]} feature columns" if columns is not None else f"array x has examples of shape {x.shape[1:]}"
            raise ValueError(f"data file {path}: {what}, the task's input shape {shape} needs {per_example} values")
        x = x.reshape((len(x), *shape))
    return Split(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64))


def _check_finite(path: Path, x: np.ndarray, columns: list[str] | None) -> None:
    """Refuse NaN or infinite features, naming the first column (CSV) or example (npz)."""
    finite = np.isfinite(x.reshape(len(x), -1))
    if finite.all():
        return
    row, col = (int(i[0]) for i in np.nonzero(~finite))
    where = f"column {columns[col]!r}, row {row + 1}" if columns is not None else f"array x, example {row}"
    raise ValueError(f"data file {path}: {where} is {x.reshape(len(x), -1)[row, col]} (NaN or infinite values are refused)")


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


def _from_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Features, labels, the feature columns' names and the label column's description."""
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
    features = [n for i, n in enumerate(names) if i != label]
    return np.delete(table, label, axis=1), y.astype(np.int64), features, f"column {names[label]!r}"
