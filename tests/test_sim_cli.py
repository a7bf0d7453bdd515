"""fedge-sim as a user runs it: overrides, multirun, clear errors (must-shows 2, 4) and
output that fits an 80-column terminal (issue 10, must-show 5)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from fedge.server.federation import RoundRecord
from fedge.simulations.progress import print_outcome, summary_table

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
    assert proc.returncode == 2, out  # every configuration error, Hydra's or fedge's
    for needle in needles:
        assert needle in proc.stderr, out
    assert len(out.splitlines()) <= 10, out  # a few lines, no traceback wall
    assert proc.stderr.startswith("fedge-sim: configuration error: ")
    assert "Traceback" not in out


def test_unknown_strategy_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "strategy=nope"), "strategy: no option 'nope'", "fedavg")


def test_bad_value_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "client.lr=abc"), "client.lr", "abc")


def test_semantic_error_is_named(tmp_path):
    _assert_short_error(fedge_sim(tmp_path, "client.lr=-1", "rounds=1"), "lr must be > 0")


def _record(round_: int, simulated: bool) -> RoundRecord:
    """A round with every total large enough to need its full width."""
    return RoundRecord(
        round=round_, accuracy=0.9556, loss=0.2, uplink_bytes=123_456_789_012 * (round_ > 0),
        downlink_bytes=987_654_321_098 * (round_ > 0), wall_s=12345.6, replies=1000, failures=12, dropped=3,
        sim_round_s=98765.4321 if simulated else None, energy_j=12345.678 if simulated else None,
        stragglers=77 if simulated else 0, unavailable=55 if simulated else 0,
    )


def test_summary_fits_80_columns_whole():
    """The summary at 80 columns: no line longer, no header or value cut to an ellipsis."""
    for simulated in (False, True):
        rounds = [_record(r, simulated) for r in range(501)]
        console = Console(width=80, record=True)
        console.print(summary_table("image / FedTrimmedAvg / mix_wearable_phone_gateway", rounds))
        text = console.export_text()
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, text
        assert "…" not in text, text
        names = ["rounds", "final acc", "best acc", "uplink MB", "downlink MB", "failures", "wall s"]
        names += ["sim s", "energy J", "stragglers", "offline"] if simulated else []
        values = ["500", "0.9556", "61728394.506", "493827160.549", "7500", "6172800.0"]
        values += ["49382716.05", "6172839.000", "38500", "27500"] if simulated else []
        for needle in [*names, *values, "image / FedTrimmedAvg / mix_wearable_phone_gateway"]:
            assert needle in text, (needle, text)
        assert ("sim s" in text) == simulated


def test_results_path_is_never_broken_inside_a_name(tmp_path):
    path = tmp_path / "outputs" / "2025-01-01" / "10-00-00" / ("a_rather_long_folder_name_" * 3) / "results.json"
    console = Console(width=80, record=True)
    print_outcome(console, 0.95561, path)
    lines = console.export_text().splitlines()
    assert lines[0] == "final accuracy: 0.9556"
    assert lines[1] == f"results: {path}"  # one line, whole, however narrow the terminal
