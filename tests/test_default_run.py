"""The default experiment (what `make run` runs) and its reproducibility (must-shows 1, 5)."""

import hashlib
import json

import numpy as np

#: sha256 of the default run's final weights (sorted names; each name's bytes, then the
#: array's bytes) as main computed it before the re-layout of issue 10 (91791c9). A change
#: that moves code must not move this; a change that means to change the numbers updates
#: it and says why in its commit.
DEFAULT_RUN_WEIGHTS_SHA256 = "32694a6211a531873fe739002904080e6b659c2f05a90bcc939f3c4b121d8cf3"


def weights_sha256(weights: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name]).tobytes())
    return digest.hexdigest()


def test_default_experiment_reaches_target_accuracy(make_cfg, tmp_path):
    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg(["progress=false"])
    assert (cfg.task._target_, cfg.num_clients, cfg.partition.alpha, cfg.rounds) == (
        "fedge.tasks.digits.DigitsTask",
        10,
        0.5,
        20,
    )
    assert cfg.strategy._target_.endswith(".FedAvg") and cfg.partition._target_.endswith("DirichletPartitioner")
    outcome = run_experiment(cfg, tmp_path)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["final"]["accuracy"] == outcome.result.final.accuracy
    assert stored["final"]["round"] == 20
    assert outcome.result.final.accuracy >= 0.93
    assert weights_sha256(outcome.final_weights) == DEFAULT_RUN_WEIGHTS_SHA256
    with np.load(tmp_path / "final_model.npz") as stored_weights:
        assert weights_sha256(dict(stored_weights)) == DEFAULT_RUN_WEIGHTS_SHA256
    assert all(r["uplink_bytes"] > 0 and r["downlink_bytes"] > 0 and r["wall_s"] > 0 for r in stored["rounds"][1:])


def test_same_seed_same_backend_is_bit_identical(make_cfg):
    from fedge.simulations.experiment import run_experiment

    overrides = ["progress=false", "rounds=3", "backend.num_workers=2"]
    first = run_experiment(make_cfg(overrides))
    second = run_experiment(make_cfg(overrides))
    assert first.result.final.accuracy == second.result.final.accuracy
    assert first.final_weights.keys() == second.final_weights.keys()
    for name in first.final_weights:
        assert np.array_equal(first.final_weights[name], second.final_weights[name]), name
    other = run_experiment(make_cfg([*overrides, "seed=1"]))
    assert any(not np.array_equal(first.final_weights[k], other.final_weights[k]) for k in first.final_weights)
