"""ReputationScreen (fedge.strategies.reputation_screen): per-device evidence across rounds,
on hand-made sparse (top-k) federations, through a checkpoint, and end to end in fedge-sim."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from robust_helpers import aggregate, reply

from fedge.strategies.delta_aggregation import RobustDecision
from fedge.strategies.fltrust import FLTrust
from fedge.strategies.reputation_screen import ReputationLedger, ReputationScreen, robust_threshold, sent_cosines

DIM, K = 40, 10  # model size; coordinates each (top-k) update sends
HONEST = list(range(1, 8))
ATTACKER = 99


def _step(server_round: int) -> np.ndarray:
    """The server's reference update of ``server_round`` (changes every round)."""
    return np.random.default_rng([7, server_round]).normal(size=DIM)


def _reference(global_model: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
    return {"w": global_model["w"] + _step(server_round)}


def _topk(update: np.ndarray) -> np.ndarray:
    sparse = np.zeros_like(update)
    keep = np.argsort(np.abs(update))[-K:]
    sparse[keep] = update[keep]
    return sparse


def _honest(node: int, server_round: int) -> np.ndarray:
    """A non-IID device: the round's direction plus its own persistent skew and noise, top-k."""
    skew = np.random.default_rng([1, node]).normal(size=DIM) * 0.8
    noise = np.random.default_rng([2, node, server_round]).normal(size=DIM) * 0.5
    return _topk(_step(server_round) + skew + noise)


def _screen(**kwargs: Any) -> ReputationScreen:
    return ReputationScreen(min_train_nodes=2, min_available_nodes=2, reference=_reference, **kwargs)


def _play(strategy: ReputationScreen, rounds: range, update: Callable[[int, int], np.ndarray | None]) -> dict[tuple[int, int], RobustDecision]:
    """Run ``rounds`` with ``update(node, round)`` per device (None: the device does not reply);
    every per-device decision by (round, node)."""
    start = np.zeros(DIM)
    for server_round in rounds:
        replies = [reply(n, start + u) for n in [*HONEST, ATTACKER] if (u := update(n, server_round)) is not None]
        aggregate(strategy, replies, start, server_round)
    return {(d.server_round, d.node_id): d for d in strategy.decisions if d.node_id >= 0 and d.action != "clipped"}


def _persistent_flipper(node: int, server_round: int) -> np.ndarray:
    if node == ATTACKER:
        return _topk(-3.0 * _step(server_round))
    if node == 3 and server_round == 6:
        return -_honest(node, server_round)  # one bad round of an honest device
    return _honest(node, server_round)


def test_a_persistent_sign_flipper_is_excluded_and_honest_skewed_devices_are_not() -> None:
    strategy = _screen(warmup_rounds=3, clip="off")
    decisions = _play(strategy, range(1, 13), _persistent_flipper)
    assert all(decisions[r, ATTACKER].action == "excluded" for r in range(1, 13))
    assert all("threshold" in decisions[r, ATTACKER].reason for r in range(3, 13))  # decided by its reputation after warm-up
    assert all(decisions[r, n].action == "kept" for r in range(3, 13) for n in HONEST)
    # device 3's bad round: its own score is negative, FLTrust's per-round screen would drop it; its reputation keeps it
    assert "score -" in decisions[6, 3].reason and decisions[6, 3].score is not None and decisions[6, 3].score > 0
    per_round = FLTrust(min_train_nodes=2, min_available_nodes=2, reference=_reference, rescale=False, trust_weighted=False)
    aggregate(per_round, [reply(n, _persistent_flipper(n, 6)) for n in [*HONEST, ATTACKER]], np.zeros(DIM), 6)
    assert {d.node_id for d in per_round.decisions if d.action == "excluded"} == {3, ATTACKER}
    # the kept updates are averaged by examples (all 10 here), at their own magnitude
    start = np.zeros(DIM)
    result = aggregate(strategy, [reply(n, start + _persistent_flipper(n, 13)) for n in [*HONEST, ATTACKER]], start, 13)
    expected = np.mean([_persistent_flipper(n, 13) for n in HONEST], axis=0)
    assert np.allclose(result, expected, atol=1e-5)


def test_a_device_that_turns_bad_mid_run_is_caught_within_a_few_rounds() -> None:
    def turncoat(node: int, server_round: int) -> np.ndarray | None:
        if node == ATTACKER:
            return None  # no attacker here: device 5 becomes one
        if node == 5 and server_round >= 9:
            return _topk(-3.0 * _step(server_round))
        return _honest(node, server_round)

    decisions = _play(_screen(), range(1, 17), turncoat)
    assert all(decisions[r, 5].action == "kept" for r in range(3, 9))  # honest until round 8
    caught = min(r for r in range(9, 17) if decisions[r, 5].action == "excluded")
    assert caught <= 11 and all(decisions[r, 5].action == "excluded" for r in range(caught, 17))
    assert all(decisions[r, n].action == "kept" for r in range(3, 17) for n in HONEST if n != 5)


def test_the_ledger_is_per_node_id_and_survives_a_checkpoint_like_other_strategies_state() -> None:
    from fedge.server import strategy_state

    def sometimes_absent(node: int, server_round: int) -> np.ndarray | None:
        if node == 2 and server_round % 2 == 0:
            return None  # device 2 replies every other round: its count and average move only then
        return _persistent_flipper(node, server_round)

    uninterrupted = _screen()
    expected = _play(uninterrupted, range(1, 11), sometimes_absent)

    first = _screen()
    _play(first, range(1, 6), sometimes_absent)
    reputation, rounds = first.ledger.lookup([2, 3, ATTACKER])
    assert rounds.tolist() == [3, 5, 5] and reputation[2] < 0 < reputation[1]
    description, arrays = strategy_state.capture(first)
    assert {"ledger_nodes", "ledger_reputation", "ledger_rounds"} <= set(description["attributes"])
    restarted = _screen()  # a fresh process: same configuration, state from the checkpoint
    strategy_state.restore(restarted, description, {k: np.array(v) for k, v in arrays.items()})
    resumed = _play(restarted, range(6, 11), sometimes_absent)
    assert all(resumed[key].reason == expected[key].reason and resumed[key].action == expected[key].action for key in resumed)
    assert np.array_equal(restarted.ledger.reputation, uninterrupted.ledger.reputation)

    forgetful = _play(_screen(), range(6, 11), sometimes_absent)  # control: without the ledger, warm-up starts again
    assert "warm-up" in forgetful[6, 3].reason and "warm-up" not in expected[6, 3].reason


def test_scores_use_the_coordinates_a_device_sent_and_the_threshold_is_median_minus_k_mad() -> None:
    reference = np.array([3.0, 4.0, 0.0, 12.0])
    deltas = np.array([[3.0, 4.0, 0.0, 0.0],  # the reference on what it sent: 1 (FLTrust's dense cosine: 5/13)
                       [0.0, -4.0, 0.0, 0.0],  # -1
                       [0.0, 0.0, 5.0, 0.0],  # the reference is 0 where it sent: 0
                       [0.0, 0.0, 0.0, 0.0]])  # nothing sent: 0
    assert sent_cosines(deltas, reference) == pytest.approx([1.0, -1.0, 0.0, 0.0])
    threshold, median, mad = robust_threshold(np.array([0.1, 0.3, 0.4, 0.5, -0.6]), 2.0, 0.1)
    assert (median, mad) == pytest.approx((0.3, 0.2)) and threshold == pytest.approx(0.3 - 2.0 * 1.4826 * 0.2)
    assert robust_threshold(np.array([0.80, 0.81, 0.82, 0.5]), 3.0, 0.1)[0] == pytest.approx(0.805 - 0.1)  # tight: min_gap
    ledger = ReputationLedger.empty().updated([5, 2], np.array([0.5, -0.5]), 0.75).updated([2], np.array([0.5]), 0.75)
    assert ledger.nodes.tolist() == [2, 5] and ledger.reputation == pytest.approx([-0.25, 0.5]) and ledger.rounds.tolist() == [2, 1]
    big = 2**63 - 1  # fedge-server's registry hashes device ids to node ids up to this
    assert ledger.updated([big], np.array([0.1]), 0.75).lookup([big, 5])[0] == pytest.approx([0.1, 0.5])


def test_an_all_excluded_round_leaves_the_model_in_place_and_bad_settings_are_refused() -> None:
    start = np.array([1.0] * DIM)
    strategy = _screen()
    result = aggregate(strategy, [reply(n, start - _topk(_step(1))) for n in (1, 2, 3)], start)
    assert np.allclose(result, start) and strategy.decisions[-1].node_id == -1
    for bad in ({"memory": 1.0}, {"memory": -0.1}, {"warmup_rounds": 0}, {"mad_factor": 0.0}, {"min_gap": -0.1}, {"min_reputation": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _screen(**bad)


def test_built_from_config_it_gets_the_server_reference_as_fltrust_does() -> None:
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from fedge.client.train_config import TrainConfig
    from fedge.conf.build import ConfigError, build_strategy
    from fedge.conf.schema import register_configs
    from fedge.conf.server_reference import attach_server_reference
    from fedge.tasks.digits import DigitsTask

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        with pytest.raises(ConfigError, match="memory"):
            build_strategy(compose("config", overrides=["strategy=reputation_screen", "strategy.memory=1.5"]))
        compressed = build_strategy(compose("config", overrides=["strategy=reputation_screen", "strategy.root_examples=50"]))
    inner = compressed.strategy
    assert isinstance(inner, ReputationScreen) and inner.reference is None and inner.clip == "median"
    task = DigitsTask()
    attach_server_reference(compressed, task, task.load().train, TrainConfig(), seed=0)
    assert inner.reference is not None


def test_fedge_sim_records_every_devices_reputation_and_excludes_the_attacker(make_cfg, tmp_path) -> None:
    """fedge-sim end to end (top-k, IID, one sign-flipping device of five, 4 rounds, warm-up 2)."""
    import json

    from conftest import FAST

    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg([*FAST, "num_clients=5", "partition=iid", "rounds=4", "strategy=reputation_screen", "strategy.warmup_rounds=2",
                    "compression=topk", "attack=signflip", "attack.fraction=0.2", "server.max_update_norm_median=0"])
    path = run_experiment(cfg, tmp_path).results_path
    assert path is not None
    results = json.loads(path.read_text())
    attackers = set(results["attack"]["attackers"])
    decisions = [d for d in results["robust"] if d["node_id"] >= 0 and d["action"] != "clipped"]
    assert len(decisions) == 4 * 5 and all("reputation" in d["reason"] for d in decisions)
    assert len(attackers) == 1
    assert all(d["action"] == "excluded" for d in decisions if d["node_id"] in attackers)
    assert all(d["action"] == "kept" for d in decisions if d["node_id"] not in attackers and d["server_round"] >= 2)
