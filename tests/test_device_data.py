"""``fedge-client --data`` refuses wrong device data before joining (issue 17, must-show 5).

Each bad file makes ``fedge-client`` exit with status 2 and a message naming the file
and the problem (the array or column, the value), without a traceback. The server
address is a loopback port nobody listens on, with one retry allowed: a client that got
past its data check would try to connect and fail differently (exit status 1 after
retries), so exit 2 with the data message shows the refusal came first.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.client.data import load_local_data

BIN = Path(sys.executable).parent
HEADER = ",".join([f"p{i}" for i in range(64)] + ["label"])


def _csv(rows: list[list[float]], header: str = HEADER) -> str:
    return header + "\n" + "\n".join(",".join(repr(v) for v in row) for row in rows) + "\n"


def _good_rows(n: int = 4) -> list[list[float]]:
    return [[0.5] * 64 + [i % 10] for i in range(n)]


def _nan_row() -> list[list[float]]:
    rows = _good_rows()
    rows[2][17] = float("nan")
    return rows


def _bad_label() -> list[list[float]]:
    rows = _good_rows()
    rows[1][64] = 10
    return rows


CASES = {
    "nan.csv": (_csv(_nan_row()), ["column 'p17', row 3", "nan"]),
    "label.csv": (_csv(_bad_label()), ["column 'label'", "holds 10", "0..9"]),
    "shape.csv": (_csv([r[1:] for r in _good_rows()], ",".join([f"p{i}" for i in range(1, 64)] + ["label"])),
                  ["63 feature columns", "(1, 8, 8) needs 64"]),
    "negative.npz": ({"x": np.zeros((3, 1, 8, 8)), "y": np.array([0, -1, 2])}, ["array y", "holds -1", "0..9"]),
    "inf.npz": ({"x": np.where(np.arange(3 * 64).reshape(3, 1, 8, 8) == 70, np.inf, 0.0), "y": np.zeros(3, int)},
                ["array x, example 1", "inf"]),
    "shape.npz": ({"x": np.zeros((3, 7, 7)), "y": np.zeros(3, int)}, ["array x has examples of shape (7, 7)", "needs 64"]),
    "labels2d.npz": ({"x": np.zeros((3, 64)), "y": np.zeros((3, 1), int)}, ["array y must have shape (N,)"]),
}


def _write(path: Path, content: object) -> None:
    if isinstance(content, dict):
        np.savez(path, **content)
    else:
        path.write_text(str(content))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fedge_client_refuses_bad_data_before_joining(tmp_path: Path, name: str):
    content, needles = CASES[name]
    path = tmp_path / name
    _write(path, content)
    proc = subprocess.run(
        [str(BIN / "fedge-client"), "--server", "127.0.0.1:1", "--insecure", "--device-id", "d1", "--task", "digits",
         "--data", str(path), "--max-retries", "1", "--backoff-max", "0.1", "--log-level", "ERROR"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_good_csv_and_npz_still_load(tmp_path: Path):
    _write(tmp_path / "ok.csv", _csv(_good_rows()))
    split = load_local_data(tmp_path / "ok.csv", (1, 8, 8), num_classes=10)
    assert split.x.shape == (4, 1, 8, 8) and split.y.tolist() == [0, 1, 2, 3]
    _write(tmp_path / "ok.npz", {"x": np.zeros((3, 64)), "y": np.array([0, 9, 5])})
    assert load_local_data(tmp_path / "ok.npz", (1, 8, 8), num_classes=10).x.shape == (3, 1, 8, 8)
