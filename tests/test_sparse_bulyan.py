"""fedge's sparse-aware Bulyan (fedge.strategies.sparse_bulyan): Flower's Bulyan on dense
updates; sender-only selection and trimming on top-k updates; too few replies skip the round."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import Bulyan
from robust_helpers import aggregate, reply

from fedge.strategies.sparse_bulyan import SparseBulyan

NODES = dict(min_train_nodes=2, min_available_nodes=2)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("n", "f"), [(7, 1), (10, 1), (11, 2)])
def test_dense_updates_aggregate_as_flowers_bulyan(seed: int, n: int, f: int) -> None:
    rng = np.random.default_rng(seed)
    start = rng.normal(size=80)
    deltas = 0.1 + rng.normal(size=(n, 80)) * rng.uniform(0.05, 0.5, size=(n, 1))
    deltas[rng.choice(n, f, replace=False)] *= -8  # f attackers
    examples = rng.integers(5, 50, size=n)

    def replies() -> list:  # Flower's Bulyan empties the replies' arrays (keep_input=False): one set each
        return [reply(100 + i, start + d, int(e)) for i, (d, e) in enumerate(zip(deltas, examples))]

    arrays, _ = Bulyan(num_malicious_nodes=f, **NODES).aggregate_train(1, replies())
    assert arrays is not None
    strategy = SparseBulyan(num_malicious_nodes=f, **NODES)
    np.testing.assert_allclose(aggregate(strategy, replies(), start), arrays["w"].numpy(), rtol=0, atol=2e-6)
    assert sum(d.action == "kept" for d in strategy.decisions) == n - 2 * f  # theta selected


def test_on_topk_updates_bulyan_follows_the_honest_direction_where_plain_bulyan_collapses() -> None:
    rng = np.random.default_rng(3)
    d, k, n = 300, 30, 9
    direction = rng.uniform(0.5, 1.5, size=d)
    deltas = np.zeros((n, d))
    for i in range(n):
        support = rng.choice(d, k, replace=False)
        deltas[i, support] = direction[support] * rng.uniform(0.8, 1.2, size=k)
    deltas[0] = -10 * deltas[0]  # one sign-flipper
    start = np.zeros(d)
    arrays, _ = Bulyan(num_malicious_nodes=1, **NODES).aggregate_train(1, [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)])
    flower = arrays["w"].numpy() if arrays is not None else None
    assert flower is not None and np.count_nonzero(flower) < d // 10  # medians of mostly-zero columns: ~0
    strategy = SparseBulyan(num_malicious_nodes=1, fill="trusted", **NODES)
    got = aggregate(strategy, [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)], start)
    honest_mean = deltas[1:].mean(axis=0)
    assert np.all(got[(deltas[1:] != 0).any(axis=0)] > 0)  # the flipper, least central, never gets in
    assert np.all(got[(deltas[1:] == 0).all(axis=0)] == 0)  # not even where it alone sent
    untouched = deltas[0] == 0  # the coordinates the flipper did not send: the honest mean's direction
    assert np.corrcoef(got[untouched], honest_mean[untouched])[0, 1] > 0.99
    assert np.linalg.norm(got) > 0.5 * np.linalg.norm(honest_mean)


def test_too_few_replies_skip_the_round_and_say_why() -> None:
    start = np.zeros(4)
    replies = [reply(100 + i, np.full(4, 0.1 * i), 10) for i in range(6)]
    strategy = SparseBulyan(num_malicious_nodes=1, **NODES)

    class _Grid:
        def get_node_ids(self) -> list[int]:
            return [m.metadata.src_node_id for m in replies]

    strategy.configure_train(1, ArrayRecord({"w": Array(start.astype(np.float32))}), ConfigRecord(), _Grid())  # type: ignore[arg-type]
    assert strategy.aggregate_train(1, replies) == (None, None)
    assert [(d.node_id, d.action) for d in strategy.decisions] == [(-1, "excluded")]
    assert "4f + 3 = 7" in strategy.decisions[0].reason
