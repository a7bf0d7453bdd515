"""Flower's robust rules on sparse uplinks are refused, naming fedge's sparse-aware rule
(fedge.conf.sparse_rules); the sparse-aware rules run end to end with top-k."""

from __future__ import annotations

import json

import pytest
from test_attacks import TOPK
from test_cli_errors import FEDGE_SIM, PREFIX, assert_refused
from test_cli_errors import run as run_cli

from fedge.conf.build import ConfigError, build_strategy
from fedge.simulations.experiment import run_experiment

RULES = {
    "fedmedian": "sparse_median",
    "fedtrimmedavg": "sparse_trimmed_avg",
    "krum": "sparse_krum",
    "multikrum": "sparse_multikrum",
    "bulyan": "sparse_bulyan",
}


@pytest.mark.parametrize("codec", ["topk", "randk"])
@pytest.mark.parametrize("flower", list(RULES))
def test_flowers_rule_on_a_sparse_uplink_is_refused_naming_the_sparse_aware_rule(make_cfg, flower, codec):
    with pytest.raises(ConfigError, match=f"use strategy={RULES[flower]} "):
        build_strategy(make_cfg([f"strategy={flower}", f"compression={codec}"]))
    # the opt-in runs Flower's rule as asked
    built = build_strategy(make_cfg([f"strategy={flower}", f"compression={codec}", "server.allow_flower_robust_on_sparse=true"]))
    assert type(built.strategy).__module__.startswith("flwr.")


@pytest.mark.parametrize("flower", list(RULES))
def test_dense_uplinks_and_the_sparse_aware_rules_are_accepted(make_cfg, flower):
    for codec in ("none", "q8"):
        assert type(build_strategy(make_cfg([f"strategy={flower}", f"compression={codec}"])).strategy).__module__.startswith("flwr.")
    sparse = build_strategy(make_cfg([f"strategy={RULES[flower]}", "compression=topk"])).strategy
    assert type(sparse).__module__ == f"fedge.strategies.{RULES[flower]}"
    assert build_strategy(make_cfg(["strategy=fedavg", "compression=topk"]))  # FedAvg's mean needs nothing


def test_fedge_sim_refuses_krum_with_topk_in_one_line(tmp_path):
    proc = run_cli(tmp_path, FEDGE_SIM, "strategy=krum", "compression=topk")
    assert_refused(proc, tmp_path, PREFIX, "strategy: Flower's Krum", "use strategy=sparse_krum", "server.allow_flower_robust_on_sparse=true")


def test_sparse_aware_krum_family_with_topk_ends_close_to_fedavg(make_cfg, tmp_path):
    """Issue 12 must-show 2's mechanism for the Krum family: Flower's Krum on top-k picks the
    smallest update and collapses; the sparse-aware rules end close to FedAvg."""
    fedavg = run_experiment(make_cfg(TOPK)).result.final.accuracy
    krum = run_experiment(make_cfg([*TOPK, "strategy=krum", "server.allow_flower_robust_on_sparse=true"])).result.final.accuracy
    assert fedavg > 0.6 and krum < fedavg - 0.1, (fedavg, krum)
    for rule in ("sparse_krum", "sparse_multikrum", "sparse_bulyan"):
        outcome = run_experiment(make_cfg([*TOPK, f"strategy={rule}"]), tmp_path / rule)
        assert outcome.result.final.accuracy > fedavg - 0.08, (rule, fedavg, outcome.result.final.accuracy)
        decisions = json.loads(outcome.results_path.read_text())["robust"]
        assert {d["action"] for d in decisions} == {"kept", "excluded"}  # every device's Krum rank, every round
        assert all("Krum rank" in d["reason"] for d in decisions)
