"""``eval_every``: central evaluation every N rounds (round 0 and the last always) changes
no weights, records ``null`` for the rounds it skips, and the report and the progress
summary still render (real digits federations, in-process clients)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FAST
from fedge.conf.build import ConfigError
from fedge.server.federation import evaluated
from fedge.simulations.experiment_checks import check_experiment


def test_round_zero_every_nth_and_the_last_round_are_evaluated() -> None:
    assert [r for r in range(8) if evaluated(r, 7, 3)] == [0, 3, 6, 7]
    assert all(evaluated(r, 5, 1) for r in range(6))


def test_skipping_evaluations_changes_no_weight_and_records_null(make_cfg, tmp_path) -> None:
    from fedge.simulations.experiment import run_experiment
    from fedge.simulations.progress import summary_table
    from fedge.simulations.report import make_report

    every = run_experiment(make_cfg([*FAST, "rounds=3", "num_clients=4"]))
    sparse = run_experiment(make_cfg([*FAST, "rounds=3", "num_clients=4", "eval_every=2"]), tmp_path)
    for name, array in every.final_weights.items():
        assert np.array_equal(array, sparse.final_weights[name]), name  # the evaluator draws no training randomness
    assert [r.accuracy is not None for r in sparse.result.rounds] == [True, False, True, True]
    assert sparse.result.final_accuracy == every.result.final_accuracy
    assert [r.accuracy for r in every.result.rounds][2] == sparse.result.rounds[2].accuracy
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["rounds"][1]["accuracy"] is None and stored["rounds"][1]["loss"] is None
    assert stored["rounds"][1]["uplink_bytes"] > 0  # the round itself ran and is recorded
    report = make_report([tmp_path])
    assert "| 1 | - | - |" in report.read_text()  # the round table says "not evaluated"
    assert (report.parent / "accuracy_vs_round.png").exists()
    summary_table("t", sparse.result.rounds)  # best accuracy over the evaluated rounds only


@pytest.mark.parametrize("overrides, needle", [(["eval_every=0"], "eval_every must be >= 1"),
                                               (["eval_every=2", "mode=async", "device=mix_wearable_phone_gateway"], "sync rounds only")])
def test_bad_eval_every_is_refused_before_anything_runs(make_cfg, overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_experiment(make_cfg(overrides))


def test_fedge_server_refuses_eval_every_in_fedges_error_style(tmp_path) -> None:
    from test_cli_errors import FEDGE_SERVER, assert_refused, run

    proc = run(tmp_path, FEDGE_SERVER, "--insecure", "eval_every=5")
    assert_refused(proc, tmp_path, "fedge-server: configuration error: ", "eval_every: fedge-sim only")
