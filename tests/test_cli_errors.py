"""Refused configurations as a user meets them (issue 10, must-show 6).

Each test runs the installed console script in an empty folder, as a user would: a
refused config exits 2 with a few lines naming the key (and the closest valid name),
no traceback, and leaves no output directory behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
FEDGE_SIM = str(BIN / "fedge-sim")
FEDGE_SERVER = str(BIN / "fedge-server")
PREFIX = "fedge-sim: configuration error: "


def run(tmp_path: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "80"}
    return subprocess.run([command, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)


def assert_refused(proc: subprocess.CompletedProcess[str], cwd: Path, prefix: str, *needles: str) -> None:
    """Exit 2, at most 10 lines on stderr in fedge's style naming ``needles``, nothing on disk."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 1 <= len(lines) <= 10, proc.stderr
    assert lines[0].startswith(prefix), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "HYDRA_FULL_ERROR" not in proc.stderr  # not Hydra's own error report
    assert sorted(p.name for p in cwd.iterdir()) == [], "a refused run left files behind"


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        # unknown key, with and without '+': the typo is named and the real key suggested
        ("compresion=topk", ["compresion: unknown key", "did you mean 'compression'"]),
        ("+compresion=topk", ["compresion: unknown key", "did you mean 'compression'"]),
        ("client.lrr=0.1", ["client.lrr: unknown key", "did you mean 'client.lr'"]),
        ("+client.lrr=0.1", ["client.lrr: unknown key", "did you mean 'client.lr'"]),  # a typed section is closed
        ("+task.widht=8", ["task.widht", "DigitsTask takes no argument 'widht'", "did you mean 'width'"]),
        ("+rounds=3", ["rounds: already set"]),
        # bad type
        ("rounds=abc", ["rounds:", "'abc'"]),
        ("client.lr=fast", ["client.lr:", "'fast'"]),
        # bad value
        ("rounds=0", ["rounds must be >= 1, got 0"]),
        ("compression=nosuch", ["compression: no option 'nosuch'", "topk"]),
        ("strategy=fedproxx", ["strategy: no option 'fedproxx'", "did you mean 'fedprox'"]),
        ("strategy.fraction_train=2", ["strategy.fraction_train: must be in (0, 1], got 2"]),
        ("strategy.min_train_nodes=50", ["strategy.min_train_nodes: must be in [0, num_clients=10], got 50"]),
        ("rounds=[", ["rounds: cannot read"]),
        # partial updates: patterns are checked against the task's model before anything is written
        ("client.freeze=[0.*]", ["client.freeze: pattern '0.*' matches no model tensor", "features.0.weight"]),
        ("client.trainable=[nope.*]", ["client.trainable: pattern 'nope.*' matches no model tensor"]),
    ],
)
def test_fedge_sim_refuses(tmp_path, override, needles):
    assert_refused(run(tmp_path, FEDGE_SIM, override), tmp_path, PREFIX, *needles)


def test_a_sweep_is_checked_value_by_value_before_any_job_runs(tmp_path):
    proc = run(tmp_path, FEDGE_SIM, "-m", "rounds=1,0", "compression=none,fp16")
    assert_refused(proc, tmp_path, PREFIX, "rounds must be >= 1, got 0")


@pytest.mark.parametrize("sweep", ["rounds=1,2", "compression=glob(q*)"])
def test_several_values_without_multirun_say_how(tmp_path, sweep):
    key = sweep.split("=")[0]
    assert_refused(run(tmp_path, FEDGE_SIM, sweep), tmp_path, PREFIX, f"{key}: several values", "-m")


def test_a_config_the_job_refuses_leaves_no_output_directory(tmp_path):
    """Digits has no natural ids: only the job, after loading the data, can tell. Hydra
    has made outputs/<date>/<time>/ by then; the refusal removes what it wrote."""
    proc = run(tmp_path, FEDGE_SIM, "partition=natural", "rounds=1", "progress=false", "backend.num_workers=0")
    assert_refused(proc, tmp_path, PREFIX, "partition:", "no natural ids")


def test_a_sweep_job_the_job_refuses_leaves_no_sweep_directory(tmp_path):
    proc = run(tmp_path, FEDGE_SIM, "-m", "partition=natural,iid", "rounds=1", "progress=false", "backend.num_workers=0")
    assert proc.returncode == 2, proc.stderr
    assert "partition:" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_refused_run_keeps_what_was_there(tmp_path):
    """Only what the refused run wrote goes: an older run's folder stays as it was."""
    older = tmp_path / "outputs" / "2020-01-01" / "00-00-00"
    older.mkdir(parents=True)
    (older / "results.json").write_text("{}")
    proc = run(tmp_path, FEDGE_SIM, "partition=natural", "rounds=1", "progress=false", "backend.num_workers=0")
    assert proc.returncode == 2, proc.stderr
    assert [p.relative_to(tmp_path) for p in sorted(tmp_path.rglob("*"))] == [
        Path("outputs"), Path("outputs/2020-01-01"), Path("outputs/2020-01-01/00-00-00"),
        Path("outputs/2020-01-01/00-00-00/results.json"),
    ]


def test_plus_adds_a_key_where_the_schema_is_open(tmp_path):
    """`+` may add a constructor argument of a _target_ node or a key of a free-form
    mapping; `--cfg job` composes (and checks) without running anything."""
    proc = run(tmp_path, FEDGE_SIM, "--cfg", "job", "+strategy.weighted_by_key=num-examples",
               "device=phone", "+device.mix.wearable=0.0")
    assert proc.returncode == 0, proc.stderr
    assert "weighted_by_key: num-examples" in proc.stdout and "wearable: 0.0" in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_fedge_server_refuses_in_the_same_style(tmp_path):
    proc = run(tmp_path, FEDGE_SERVER, "--insecure", "compresion=topk")
    assert_refused(proc, tmp_path, "fedge-server: configuration error: ", "compresion: unknown key",
                   "did you mean 'compression'")


def test_fedge_server_refuses_a_freeze_pattern_that_names_no_tensor(tmp_path):
    proc = run(tmp_path, FEDGE_SERVER, "--insecure", "client.freeze=[0.*]")
    assert_refused(proc, tmp_path, "fedge-server: configuration error: ",
                   "client.freeze: pattern '0.*' matches no model tensor")


def test_fedge_server_missing_certs_leaves_no_output_directory(tmp_path):
    """The certificate folder is only opened by the job; its refusal cleans up too."""
    proc = run(tmp_path, FEDGE_SERVER, "server.certs=nowhere", "server.address=127.0.0.1:0")
    assert_refused(proc, tmp_path, "fedge-server: configuration error: ", "nowhere")


@pytest.mark.parametrize(("command", "groups"), [
    (FEDGE_SIM, ["task", "strategy", "compression", "partition", "backend", "device"]),
    (FEDGE_SERVER, ["task", "strategy", "compression"]),
])
def test_help_says_what_the_command_does(tmp_path, command, groups):
    proc = run(tmp_path, command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text and "strategy_base" not in text and "hydra/" not in text
    for group in groups:
        assert f"\n  {group} " in text, text  # each main group with its options
    assert "digits* | custom | har | image" in text
    assert "fedavg* |" in text and "fedprox" in text and "topk" in text
    assert "rounds=20" in text and "num_clients=10" in text  # top-level settings with defaults
    assert "Examples:" in text and text.count(f"\n  {Path(command).name} ") >= 3
    assert "outputs/<date>/<time>/" in text  # where results go
    assert max(len(line) for line in text.splitlines()) <= 80
    assert list(tmp_path.iterdir()) == []
