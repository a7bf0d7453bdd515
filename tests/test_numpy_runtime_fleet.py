"""Mixed fleets in simulation: client.runtime and client.runtime_mix (issue 18)."""

import numpy as np
import pytest

from conftest import FAST
from fedge.client import TrainConfig
from fedge.simulations.experiment import run_experiment
from fedge.simulations.clients import ClientRecipe, assign_runtimes
from fedge.tasks.digits import DigitsTask

HAR = ["task=har", "partition=natural", "num_clients=10", "rounds=2", "client.local_epochs=1", "seed=0"]


def test_runtime_mix_deals_exact_counts_in_a_seeded_order():
    nodes = list(range(1000, 1010))
    train = TrainConfig(runtime_mix={"numpy": 0.5})
    runtimes = assign_runtimes(train, nodes, seed=0)
    assert sorted(runtimes) == nodes and list(runtimes.values()).count("numpy") == 5
    assert assign_runtimes(train, nodes, seed=0) == runtimes
    assert assign_runtimes(train, nodes, seed=1) != runtimes
    assert set(assign_runtimes(TrainConfig(runtime="numpy"), nodes, 0).values()) == {"numpy"}
    with pytest.raises(ValueError, match="runtime must be one of torch, numpy"):
        TrainConfig(runtime="jax")
    recipe = ClientRecipe(DigitsTask(), {1: np.arange(8), 2: np.arange(8)}, TrainConfig(runtime="numpy"), runtimes={2: "torch"})
    assert (recipe.client(1).runtime, recipe.client(2).runtime) == ("numpy", "torch")


def test_runtime_never_travels_in_a_round_config():
    cfg = TrainConfig(runtime="numpy", runtime_mix={"numpy": 0.5})
    assert not any("runtime" in key for key in cfg.to_config())
    assert TrainConfig().updated_from({"client.runtime": "numpy"}).runtime == "torch"


def test_mixed_har_fleet_ends_where_the_torch_fleet_does(make_cfg):
    results, weights = {}, {}
    for fleet in ([], ["client.runtime=numpy"], ["+client.runtime_mix.numpy=0.5"]):
        outcome = run_experiment(make_cfg([*FAST, *HAR, *fleet]))
        results[tuple(fleet)] = outcome.result.rounds[-1].accuracy
        weights[tuple(fleet)] = outcome.final_weights
    torch_acc = results[()]
    # Same start, data and batch order: float32 rounding is the only difference.
    for fleet, accuracy in results.items():
        assert abs(accuracy - torch_acc) <= 0.005, (fleet, accuracy, torch_acc)
        if fleet:  # numpy devices really trained (not bit-identical to torch's), and agreed
            gap = max(float(np.abs(weights[fleet][k] - weights[()][k]).max()) for k in weights[()])
            assert 0 < gap < 1e-4, (fleet, gap)
