"""fedge's sparse-aware Krum and MultiKrum (fedge.strategies.sparse_krum / sparse_multikrum):
Flower's rule on dense updates, meaningful scores on top-k updates with different supports."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import Krum, MultiKrum
from robust_helpers import aggregate, reply

from fedge.strategies.delta_aggregation import fill_unsent, sender_share
from fedge.strategies.sparse_krum import SparseKrum
from fedge.strategies.sparse_multikrum import SparseMultiKrum, krum_ranking

NODES = dict(min_train_nodes=2, min_available_nodes=2)


def _flower(strategy: MultiKrum, replies: list, start: np.ndarray) -> np.ndarray:
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("f", "m"), [(1, 1), (2, 1), (1, 4), (2, 6)])
def test_dense_updates_aggregate_as_flowers_rule(seed: int, f: int, m: int) -> None:
    rng = np.random.default_rng(seed)
    start = rng.normal(size=60)
    # 9 devices around a common update with different spreads, 2 far off; uneven example counts
    deltas = 0.1 + rng.normal(size=(9, 60)) * rng.uniform(0.05, 0.5, size=(9, 1))
    deltas[rng.choice(9, 2, replace=False)] += rng.normal(size=(2, 60)) * 3
    replies = [reply(100 + i, start + d, int(rng.integers(5, 50))) for i, d in enumerate(deltas)]
    flower = Krum(num_malicious_nodes=f, **NODES) if m == 1 else MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m, **NODES)
    ours = SparseKrum(num_malicious_nodes=f, bucket_size=1, clip="off", **NODES) if m == 1 else SparseMultiKrum(num_malicious_nodes=f, num_nodes_to_select=m, **NODES)
    expected = _flower(flower, replies, start)
    got = aggregate(ours, replies, start)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    kept = [d.node_id for d in ours.decisions if d.action == "kept"]
    assert len(kept) == m and len(ours.decisions) == 9


def _topk_updates(rng: np.random.Generator, devices: int, d: int, k: int, direction: np.ndarray) -> np.ndarray:
    """Top-k-like updates: each device sends its own k coordinates of the shared direction (+ noise)."""
    deltas = np.zeros((devices, d))
    for i in range(devices):
        support = rng.choice(d, k, replace=False)
        deltas[i, support] = direction[support] * rng.uniform(0.8, 1.2, size=k)
    return deltas


def test_on_topk_updates_the_small_update_no_longer_wins() -> None:
    """The collapse and its fix: with disjoint-ish supports Flower's Krum picks the smallest
    update whatever it says; the sparse-aware score compares it with the others where it sent."""
    rng = np.random.default_rng(0)
    d, k = 200, 20
    direction = rng.uniform(0.5, 1.5, size=d)
    deltas = _topk_updates(rng, 8, d, k, direction)
    deltas[7] *= -0.05  # a small update pointing the wrong way on its coordinates
    start = np.zeros(d)
    replies = [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)]
    assert np.argmin([np.linalg.norm(row) for row in deltas]) == 7
    flower = _flower(Krum(num_malicious_nodes=1, **NODES), replies, start)
    np.testing.assert_allclose(flower, deltas[7], atol=1e-6)  # Flower's Krum: the small wrong update
    strategy = SparseKrum(num_malicious_nodes=1, fill="trusted", bucket_size=1, clip="off", **NODES)
    got = aggregate(strategy, replies, start)
    chosen = next(d.node_id for d in strategy.decisions if d.action == "kept") - 100
    assert chosen != 7
    ranking = krum_ranking(fill_unsent(deltas), 1)
    assert ranking[-1] == 7  # the least central of all
    # Krum's one update: the chosen device's values where it sent, elsewhere the senders' median
    # of the n - f = 7 most central (not device 7), x their sender share
    trusted = deltas[ranking[:7]]
    np.testing.assert_allclose(got, fill_unsent(deltas[[chosen]], trusted)[0] * sender_share(trusted), atol=1e-6)
    assert np.corrcoef(got, deltas[:7].mean(axis=0))[0, 1] > 0.8  # as the honest mean (FedAvg of the 7)
    assert np.all(got[(deltas[:7] != 0).any(axis=0)] > 0)  # where honest devices sent, the wrong way never wins


def test_multikrum_on_topk_leaves_out_a_sign_flipper_and_averages_the_rest_per_sender() -> None:
    rng = np.random.default_rng(1)
    d, k = 200, 40
    direction = rng.uniform(0.5, 1.5, size=d)
    deltas = _topk_updates(rng, 9, d, k, direction)
    deltas[8] = -10 * deltas[8]  # sign-flip x10 on its own top-k coordinates
    start = np.zeros(d)
    replies = [reply(100 + i, start + row, 10 * (1 + i % 3)) for i, row in enumerate(deltas)]
    strategy = SparseMultiKrum(num_malicious_nodes=1, num_nodes_to_select=7, fill="trusted", **NODES)
    got = aggregate(strategy, replies, start)
    excluded = {d.node_id for d in strategy.decisions if d.action == "excluded"}
    assert 108 in excluded and len(excluded) == 2
    kept = [d.node_id - 100 for d in strategy.decisions if d.action == "kept"]
    weights = np.array([10 * (1 + i % 3) for i in kept], dtype=float)
    trusted = deltas[krum_ranking(fill_unsent(deltas), 1)[:8]]  # n - f: every honest device
    expected = weights @ fill_unsent(deltas[kept], trusted) / weights.sum() * sender_share(trusted)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the flipper, least central, neither fills unknown coordinates nor counts as a sender:
    # nothing of it gets in, not even where it alone sent
    assert np.all(got[(deltas[:8] != 0).any(axis=0)] > 0)
    alone = ((deltas[:8] != 0).sum(axis=0) == 0) & (deltas[8] != 0)
    assert alone.any() and np.all(got[alone] == 0)
    # the default fill takes every update: the flipper's lone coordinates move by its value / n, as under FedAvg
    default = SparseMultiKrum(num_malicious_nodes=1, num_nodes_to_select=7, **NODES)
    got = aggregate(default, [reply(100 + i, start + row, 10 * (1 + i % 3)) for i, row in enumerate(deltas)], start)
    np.testing.assert_allclose(got, weights @ fill_unsent(deltas[kept], deltas) / weights.sum() * sender_share(deltas), atol=1e-5)
    np.testing.assert_allclose(got[alone], deltas[8, alone] / 9, atol=1e-5)


def test_unsent_coordinates_are_filled_with_the_senders_median() -> None:
    deltas = np.array([[1.0, 0.0, 0.0], [3.0, 5.0, 0.0], [0.0, 7.0, 0.0]])
    np.testing.assert_array_equal(fill_unsent(deltas), [[1.0, 6.0, 0.0], [3.0, 5.0, 0.0], [2.0, 7.0, 0.0]])
    dense = np.arange(6.0).reshape(2, 3) + 1
    np.testing.assert_array_equal(fill_unsent(dense), dense)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="num_malicious_nodes"):
        SparseMultiKrum(num_malicious_nodes=-1)
    with pytest.raises(ValueError, match="num_nodes_to_select"):
        SparseMultiKrum(num_nodes_to_select=0)
    with pytest.raises(ValueError, match="fill"):
        SparseMultiKrum(fill="some")
    assert SparseKrum(num_malicious_nodes=2).num_nodes_to_select == 1
