"""``shape=`` through ``fedge-server`` with real ``fedge-client`` processes (issue 15).

Structured pruning crosses the real wire (mTLS on loopback): the server prunes channels at
its round and every Task carries the new architecture, which each ``fedge-client``
process rebuilds. The shapings whose device side exists only in ``fedge-sim`` (low-rank,
magnitude pruning, distillation) are refused before anything is written, naming the key.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from grpc_helpers import BIN, serve_digits_federation

from fedge.tasks.layer_spec import state_shapes
from fedge.tasks.shaping.architecture import from_json

DEVICES = ["1000", "1001"]


def test_fedge_server_prunes_channels_and_fedge_client_processes_rebuild_the_model(tmp_path):
    """``fedge-server shape=structured``: at round 2 the global CNN loses half its channels; both
    ``fedge-client`` processes rebuild it from the Task's architecture and keep training."""
    procs = serve_digits_federation(tmp_path, DEVICES, "rounds=4", "client.local_steps=25", "shape=structured",
                                    "shape.structured.ratio=0.5", "shape.structured.rounds=[2]")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    report = results["shape"]["structured"]
    assert [s["round"] for s in report["steps"]] == [2]
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert results["dropped_replies"] == [] and [r["replies"] for r in results["rounds"][1:]] == [2, 2, 2, 2]
    expected = state_shapes(from_json(report["architecture"]))
    with np.load(tmp_path / "run" / "final_model.npz") as final:
        assert {k: tuple(final[k].shape) for k in final.files} == {k: tuple(v) for k, v in expected.items()}
    assert results["final"]["accuracy"] > 0.5  # chance 0.1; half the channels gone at round 2
    for device in DEVICES:
        assert "rebuilt the model for architecture" in procs.log(device)


def _refused(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "80"}
    return subprocess.run([str(BIN / "fedge-server"), "--insecure", "server.address=127.0.0.1:0", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["shape=lowrank", "shape.lowrank.budget=0.4"], "shape.lowrank is simulation-only"),
        (["shape=prune", "shape.prune.sparsity=0.8"], "shape.prune.sparsity is simulation-only"),
        (["shape=distill", "shape.distill.teacher_path={teacher}"], "shape.distill.teacher_path is simulation-only"),
        (["shape=structured", "shape.structured.ratio=0.5", "shape.structured.rounds=[2]", "--resume"],
         "server.resume with shape.structured"),
        (["shape=structured", "shape.structured.ratio=0.5", "shape.structured.rounds=[2]", "mode=async"],
         "mode=async cannot use shape.structured"),
        (["shape=structured", "shape.structured.ratio=0.97", "shape.structured.rounds=[2]"], "to zero channels"),
    ],
)
def test_fedge_server_refuses_shaping_it_cannot_serve_before_writing_anything(tmp_path, overrides, needle):
    teacher = tmp_path / "elsewhere" / "teacher.npz"
    teacher.parent.mkdir()
    np.savez(teacher, w=np.zeros(1))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = _refused(cwd, *[o.format(teacher=teacher) for o in overrides])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("fedge-server: configuration error: ") and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert list(cwd.iterdir()) == [], "a refused run left files behind"


def test_fedge_sim_refuses_structured_pruning_in_async_mode_too(make_cfg):
    """The check is shared: an async simulation would otherwise run unpruned without a word."""
    from fedge.conf.build import ConfigError
    from fedge.simulations.experiment_checks import check_experiment

    cfg = make_cfg(["shape=structured", "shape.structured.ratio=0.5", "shape.structured.rounds=[2]", "mode=async"])
    with pytest.raises(ConfigError, match="mode=async cannot use shape.structured"):
        check_experiment(cfg)
