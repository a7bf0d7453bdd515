"""fedge-sim as a user runs it: overrides, multirun, and clear errors (must-shows 2, 4)."""

import json
import os
import subprocess
import sys
from pathlib import Path

FEDGE_SIM = str(Path(sys.executable).with_name("fedge-sim"))


def fedge_sim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [FEDGE_SIM, *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/multi"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def test_fedadam_iid_twenty_clients(tmp_path):
    proc = fedge_sim(tmp_path, "strategy=fedadam", "partition=iid", "num_clients=20", "rounds=5", "progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2, 3, 4, 5]
    assert all(r["replies"] == 20 for r in results["rounds"][1:])
    assert results["config"]["strategy"]["_target_"].endswith("FedAdam")
    assert "final accuracy" in proc.stdout
    assert (tmp_path / "run" / "final_model.npz").stat().st_size > 0


def test_multirun_writes_one_results_per_job(tmp_path):
    proc = fedge_sim(tmp_path, "-m", "strategy=fedavg,fedprox", "rounds=2", "progress=false", "backend.num_workers=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = sorted((tmp_path / "multi").glob("*/results.json"))
    assert len(found) == 2
    targets = {json.loads(p.read_text())["config"]["strategy"]["_target_"].rsplit(".", 1)[1] for p in found}
    assert targets == {"FedAvg", "FedProx"}


def _assert_short_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for needle in needles:
        assert needle in out, out
    assert len(out.splitlines()) <= 25, out  # one screen, no traceback wall
    assert "Traceback" not in out


def test_unknown_strategy_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "strategy=nope"), "strategy/nope", "fedavg")


def test_bad_value_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "client.lr=abc"), "client.lr", "abc")


def test_semantic_error_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "client.lr=-1", "rounds=1"), "lr must be > 0")
