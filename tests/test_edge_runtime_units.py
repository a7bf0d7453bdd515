"""Device-side pieces of issue 5 without a network: data files, task names, backoff, CLI errors."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedge.client.client_cli import main as client_main
from fedge.client.data import load_local_data
from fedge.client.runtime import backoff_delay
from fedge.tasks.digits import DigitsTask
from fedge.tasks.registry import register_task, resolve_task, task_names


def test_npz_and_csv_give_the_same_examples(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y = rng.integers(0, 10, 5)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [",".join([*(repr(float(v)) for v in row), str(int(label))]) for row, label in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join([header, *rows]) + "\n")
    from_npz = load_local_data(tmp_path / "d.npz", DigitsTask.input_shape)
    from_csv = load_local_data(tmp_path / "d.csv", DigitsTask.input_shape)
    assert from_npz.x.shape == from_csv.x.shape == (5, 1, 8, 8)
    assert np.array_equal(from_npz.x, from_csv.x) and np.array_equal(from_npz.y, from_csv.y)
    assert from_csv.y.dtype == np.int64 and from_csv.x.dtype == np.float32


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.npz", {"x": np.zeros((3, 2))}, "missing arrays ['y']"),
        ("b.npz", {"x": np.zeros((3, 2)), "y": np.zeros(2)}, "x has 3 examples but y has 2"),
        ("c.csv", "a,b\n1,2\n", "no label column"),
        ("d.csv", "a,label\n1,x\n", "non-numeric"),
        ("e.csv", "a,label\n1,0.5\n", "must be integers"),
        ("f.txt", "hello", "expected .npz"),
        ("g.npz", {"x": np.zeros((3, 5)), "y": np.zeros(3, dtype=int)}, "input shape (1, 8, 8) needs 64"),
    ],
)
def test_bad_data_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        np.savez(path, **content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_local_data(path, (1, 8, 8))


def test_task_registry_is_open_and_names_what_is_wrong():
    assert resolve_task("digits") is DigitsTask
    assert resolve_task("fedge.tasks.digits:DigitsTask") is DigitsTask
    assert resolve_task("fedge.tasks.digits.DigitsTask") is DigitsTask
    register_task("digits-again", "fedge.tasks.digits:DigitsTask")
    assert "digits-again" in task_names() and resolve_task("digits-again") is DigitsTask
    with pytest.raises(ValueError, match="unknown task 'nope'; known: .*digits"):
        resolve_task("nope")
    with pytest.raises(ValueError, match="not a fedge.tasks.FederatedTask subclass"):
        resolve_task("fedge.tasks.models:small_cnn")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_task("fedge.tasks.nowhere:Task")


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)]:
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value


def test_client_cli_names_bad_arguments(tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2, int))
    base = ["--server", "127.0.0.1:1", "--task", "digits", "--data", str(data)]
    assert client_main(base) == 2
    assert "--ca, --cert and --key are required" in capsys.readouterr().err
    assert client_main([*base, "--insecure"]) == 2
    assert "--insecure needs --device-id" in capsys.readouterr().err
    assert client_main([*base, "--ca", "x", "--cert", "y", "--key", "z"]) == 2
    assert "missing TLS files: --ca x" in capsys.readouterr().err
    assert client_main([*base, "--insecure", "--device-id", "d", "--task-option", "nope=1"]) == 2
    assert "bad --task-option" in capsys.readouterr().err


def test_bad_server_settings_are_configuration_errors(make_cfg):
    from fedge.server.serve import serve
    from fedge.conf.build import ConfigError
    from fedge.simulations.experiment import run_experiment

    with pytest.raises(ConfigError, match="server.chunk_bytes must be in"):
        run_experiment(make_cfg(["backend=grpc", "server.chunk_bytes=0", "progress=false", "rounds=1"]))
    with pytest.raises(ConfigError, match="certificate files missing: .*fedge-certs"):
        serve(make_cfg(["server.certs=/nonexistent", "progress=false"]))
