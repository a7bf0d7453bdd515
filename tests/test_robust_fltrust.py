"""FLTrust (fedge.strategies.fltrust) on hand-made updates, its reference update built from a
real task (fedge.conf.server_reference), and its configuration errors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from flwr.app import Message
from robust_helpers import aggregate
from robust_helpers import reply as _reply

from fedge.strategies.fltrust import FLTrust, trust_scores


def _fixed_reference(step: np.ndarray):  # the server's root round moves the model by ``step``
    def reference(global_model: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        return {"w": global_model["w"] + step}

    return reference


def _aggregate(strategy: FLTrust, replies: list[Message], start: np.ndarray) -> np.ndarray:
    return aggregate(strategy, replies, start).astype(np.float64)


def test_an_attacker_sending_the_negated_reference_gets_no_trust_and_does_not_move_the_model() -> None:
    start = np.array([0.5, -0.25, 1.0, 0.0])
    step = np.array([0.2, 0.1, -0.1, 0.05])
    honest = [_reply(10 + i, start + step * (1 + 0.5 * i) + 0.01 * np.eye(4)[i]) for i in range(3)]
    attacker = _reply(99, start - 50 * step, examples=10_000)  # the reference flipped, boosted, with a big claim

    without = _aggregate(FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_fixed_reference(step)), honest, start)
    strategy = FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_fixed_reference(step))
    with_attacker = _aggregate(strategy, [*honest, attacker], start)

    assert np.allclose(with_attacker, without, atol=1e-6)
    decision = next(d for d in strategy.decisions if d.node_id == 99)
    assert decision.action == "excluded" and decision.score == 0.0 and "zeroed" in decision.reason
    assert all(d.action == "kept" and d.score is not None and d.score > 0.9 for d in strategy.decisions if d.node_id != 99)


def test_trust_weights_and_rescaling_are_exact() -> None:
    reference = np.array([3.0, 4.0])  # norm 5
    deltas = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, 0.0]])
    trust, rescaled = trust_scores(deltas, reference)
    assert trust == pytest.approx([0.6, 0.8, 0.0, 0.0])  # ReLU(cos): 3/5, 4/5, -3/5 -> 0, a zero update -> 0
    assert rescaled[:3] == pytest.approx(np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, 0.0]]))
    assert np.all(rescaled[3] == 0.0)

    # the same case through the strategy: (0.6 x [5, 0] + 0.8 x [0, 5]) / 1.4; num-examples play no part
    start = np.array([1.0, -1.0])
    replies = [_reply(1, start + deltas[0], 5), _reply(2, start + deltas[1], 500), _reply(3, start + deltas[2], 50)]
    strategy = FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_fixed_reference(reference))
    result = _aggregate(strategy, replies, start)
    assert result == pytest.approx(start + np.array([3.0, 4.0]) / 1.4, abs=1e-5)
    assert [(d.node_id, d.action) for d in strategy.decisions] == [(1, "kept"), (2, "kept"), (3, "excluded")]
    assert [d.score for d in strategy.decisions] == pytest.approx([0.6, 0.8, 0.0])


def test_the_screen_alone_excludes_untrusted_updates_and_averages_the_rest_by_examples() -> None:
    start = np.zeros(2)
    deltas = [np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.array([-1.0, 0.0])]
    replies = [_reply(1, start + deltas[0], 30), _reply(2, start + deltas[1], 10), _reply(3, start + deltas[2], 1000)]
    strategy = FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_fixed_reference(np.array([3.0, 4.0])),
                       rescale=False, trust_weighted=False)
    result = _aggregate(strategy, replies, start)
    assert result == pytest.approx((30 * deltas[0] + 10 * deltas[1]) / 40, abs=1e-6)  # own magnitudes, by examples
    assert [(d.node_id, d.action) for d in strategy.decisions] == [(1, "kept"), (2, "kept"), (3, "excluded")]


def test_when_nobody_is_trusted_the_model_does_not_move() -> None:
    start = np.array([1.0, 2.0])
    strategy = FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_fixed_reference(np.array([1.0, 0.0])))
    result = _aggregate(strategy, [_reply(1, start + [-1.0, 0.0]), _reply(2, start + [0.0, 3.0])], start)
    assert result == pytest.approx(start)
    assert strategy.decisions[-1].node_id == -1 and "does not move" in strategy.decisions[-1].reason


def test_the_reference_trains_the_global_model_on_a_seeded_root_sample_of_the_training_pool() -> None:
    import torch

    from fedge.client.model_io import model_arrays
    from fedge.client.train_config import TrainConfig
    from fedge.conf.server_reference import reference_update, root_dataset
    from fedge.tasks.digits import DigitsTask

    task = DigitsTask()
    data = task.load()
    root = root_dataset(data.train, 100, seed=3)
    assert len(root) == 100 and root_dataset(data.train, 100, seed=3).y.tolist() == root.y.tolist()
    train_rows = {row.tobytes() for row in data.train.x}
    assert all(row.tobytes() in train_rows for row in root.x)  # from the training pool, not the test split
    torch.manual_seed(0)
    start = model_arrays(task.build_model())
    reference = reference_update(task, root, TrainConfig(), seed=3)
    state = torch.random.get_rng_state()
    first, again = reference(start, 1), reference(start, 1)
    assert torch.equal(state, torch.random.get_rng_state())  # the run's torch stream is untouched
    assert all(np.array_equal(first[k], again[k]) for k in start)  # deterministic per (seed, round)
    assert any(not np.array_equal(first[k], start[k]) for k in start)  # it trained


def test_configuration_errors_name_the_key() -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from fedge.conf.build import ConfigError, build_strategy
    from fedge.conf.schema import register_configs
    from fedge.conf.server_reference import attach_server_reference
    from fedge.client.train_config import TrainConfig
    from fedge.tasks.base import Split
    from fedge.tasks.digits import DigitsTask

    with pytest.raises(ValueError, match="root_examples"):
        FLTrust(root_examples=0)
    with pytest.raises(ValueError, match="clip does not apply"):
        FLTrust(clip="median")
    with pytest.raises(ValueError, match="min_cosine does not apply"):
        FLTrust(min_cosine=0.0)
    with pytest.raises(RuntimeError, match="no server reference update"):
        _aggregate(FLTrust(min_train_nodes=2, min_available_nodes=2), [_reply(1, np.ones(2)), _reply(2, np.ones(2))], np.zeros(2))
    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        with pytest.raises(ConfigError, match="root_examples"):
            build_strategy(compose("config", overrides=["strategy=fltrust", "strategy.root_examples=0"]))
        strategy = build_strategy(compose("config", overrides=["strategy=fltrust", "strategy.root_examples=50"]))
    tiny = Split(np.zeros((20, 1, 8, 8), dtype=np.float32), np.zeros(20, dtype=np.int64))
    with pytest.raises(ConfigError, match=r"strategy.root_examples=50 exceeds the task's training pool \(20 examples\)"):
        attach_server_reference(strategy, DigitsTask(), tiny, TrainConfig(), seed=0)


def test_fedge_sim_builds_the_reference_and_records_every_trust_score(make_cfg, tmp_path) -> None:
    """fedge-sim end to end (top-k, IID, one sign-flipping device): the reference is built
    from the task, every device gets a trust score per round, the attacker is zeroed."""
    import json

    from conftest import FAST

    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg([*FAST, "num_clients=5", "partition=iid", "rounds=2", "strategy=fltrust", "compression=topk",
                    "attack=signflip", "attack.fraction=0.2", "server.max_update_norm_median=0"])
    path = run_experiment(cfg, tmp_path).results_path
    assert path is not None
    results = json.loads(path.read_text())
    attackers = set(results["attack"]["attackers"])
    decisions = [d for d in results["robust"] if d["node_id"] >= 0]
    assert len(decisions) == 2 * 5 and all(0.0 <= d["score"] <= 1.0 and "trust" in d["reason"] for d in decisions)
    assert all(d["action"] == "excluded" and d["score"] == 0.0 for d in decisions if d["node_id"] in attackers)
