"""SparseKrum's momentum across rounds (fedge.strategies.update_momentum, strategy.momentum):
per-device state keyed by node id and bounded, server momentum, beta 0 = no change, an
attacker's momentum is still one device's, config errors naming the key."""

from __future__ import annotations

import numpy as np
import pytest
from robust_helpers import aggregate, reply

from fedge.strategies.sparse_krum import SparseKrum
from fedge.strategies.update_momentum import AggregateMomentum, DeviceMomentum

NODES = dict(min_train_nodes=2, min_available_nodes=2)


def test_each_device_keeps_its_own_momentum_whatever_the_order_and_absences() -> None:
    state = DeviceMomentum(0.5)
    a, b, c = np.array([2.0, 0.0]), np.array([0.0, 4.0]), np.array([8.0, 8.0])
    np.testing.assert_array_equal(state.update([1, 2], np.stack([a, b])), [a, b])  # new devices start at their update
    out = state.update([2, 3, 1], np.stack([a, c, b]))  # order swapped, node 3 new
    np.testing.assert_array_equal(out, [0.5 * b + 0.5 * a, c, 0.5 * a + 0.5 * b])
    out = state.update([3], np.stack([a]))  # 1 and 2 absent: their momenta untouched
    np.testing.assert_array_equal(out, [0.5 * c + 0.5 * a])
    np.testing.assert_array_equal(state.momenta[1], 0.5 * a + 0.5 * b)
    np.testing.assert_array_equal(state.momenta[2], 0.5 * b + 0.5 * a)
    with pytest.raises(ValueError, match="distinct node"):
        state.update([4, 4], np.stack([a, b]))


def test_device_state_is_bounded_and_forgets_the_least_recently_seen() -> None:
    state = DeviceMomentum(0.5, max_nodes=2)
    one = np.ones((1, 3))
    for node in (1, 2, 1, 3):  # 2 is now the least recently seen
        state.update([node], one * node)
    assert list(state.momenta) == [1, 3]
    np.testing.assert_array_equal(state.update([2], one * 4), one * 4)  # forgotten: restarts at its update
    np.testing.assert_array_equal(state.update([3], np.ones((1, 5))), np.ones((1, 5)))  # another model size: restarts
    assert DeviceMomentum(0.0).update([1], one) is not None and not DeviceMomentum(0.0).momenta  # beta 0: no state


def test_server_momentum_starts_at_the_first_output_then_averages() -> None:
    ema = AggregateMomentum(0.5)
    np.testing.assert_array_equal(ema.step(np.array([4.0, 0.0])), [4.0, 0.0])
    np.testing.assert_array_equal(ema.step(np.array([0.0, 2.0])), [2.0, 1.0])
    np.testing.assert_array_equal(AggregateMomentum(0.0).step(np.array([3.0])), [3.0])


def _topk_round(rng: np.random.Generator, d: int = 200, k: int = 40, n: int = 10) -> np.ndarray:
    direction = np.linspace(0.5, 1.5, d)
    deltas = np.zeros((n, d))
    for i in range(n):
        support = rng.choice(d, k, replace=False)
        deltas[i, support] = direction[support] * rng.uniform(0.6, 1.4, size=k)
    return deltas


def _run(strategy: SparseKrum, rounds: list[np.ndarray], examples: list[int]) -> list[np.ndarray]:
    start, steps = np.zeros(rounds[0].shape[1]), []
    for rnd, deltas in enumerate(rounds, start=1):
        new = aggregate(strategy, [reply(100 + i, start + row, e) for i, (row, e) in enumerate(zip(deltas, examples))], start, rnd)
        steps.append(new.astype(np.float64) - start.astype(np.float32).astype(np.float64))
        start = new.astype(np.float64)
    return steps


@pytest.mark.parametrize("bucket_size", [1, 2])
def test_device_momentum_changes_nothing_in_round_one_and_tends_to_plain_as_beta_goes_to_0(bucket_size: int) -> None:
    rng = np.random.default_rng(4)
    rounds, examples = [_topk_round(rng) for _ in range(4)], [int(e) for e in rng.integers(5, 50, size=10)]
    plain = _run(SparseKrum(num_malicious_nodes=1, bucket_size=bucket_size, **NODES), rounds, examples)
    strong = _run(SparseKrum(num_malicious_nodes=1, bucket_size=bucket_size, momentum=0.8, **NODES), rounds, examples)
    tiny = _run(SparseKrum(num_malicious_nodes=1, bucket_size=bucket_size, momentum=1e-9, **NODES), rounds, examples)
    np.testing.assert_array_equal(strong[0], plain[0])  # nobody has a past yet: bit for bit today's rule
    assert not np.allclose(strong[-1], plain[-1], atol=1e-3)  # the momentum path does something later
    for a, b in zip(tiny, plain):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_server_momentum_is_the_ema_of_plain_krums_outputs() -> None:
    rng = np.random.default_rng(5)
    rounds, examples = [_topk_round(rng) for _ in range(3)], [10] * 10
    plain = SparseKrum(num_malicious_nodes=1, **NODES)
    ema = SparseKrum(num_malicious_nodes=1, momentum=0.5, momentum_scope="aggregate", **NODES)
    start = np.zeros(200)
    expected = None
    for rnd, deltas in enumerate(rounds, start=1):
        replies = [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)]
        out = aggregate(plain, replies, start, rnd).astype(np.float64) - start
        expected = out if expected is None else 0.5 * expected + 0.5 * out
        got = aggregate(ema, replies, start, rnd).astype(np.float64) - start
        np.testing.assert_allclose(got, expected, atol=1e-6)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("beta", [0.5, 0.8])
def test_a_sleeper_attackers_momentum_cannot_take_over(beta: float) -> None:
    """Node 109 is honest for 5 rounds (its momentum looks like everyone's), then sends its
    honest update sign-flipped x10: from its first attack on, its momentum leaves the crowd
    and its bucket is never selected; the model keeps moving the honest way, closer to it than
    FedAvg's step. Where the attacker alone, or with one honest device, sent, the
    senders' median that fills the others' unsent coordinates is the attacker's, with or
    without momentum (measured with buckets of 2, no bound: cosine to the honest mean 0.5-0.7 at beta 0, 0.5-0.95
    at 0.5 and 0.8)."""
    rng = np.random.default_rng(2)
    strategy = SparseKrum(num_malicious_nodes=1, momentum=beta, **NODES)
    start = np.zeros(200)
    for rnd in range(1, 13):
        deltas = _topk_round(rng)
        if rnd > 5:
            deltas[9] *= -10
        new = aggregate(strategy, [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)], start, rnd)
        kept = {d.node_id for d in strategy.decisions if d.server_round == rnd and d.action == "kept"}
        if rnd > 5:
            assert 109 not in kept, rnd
            honest, step = deltas[:9].mean(axis=0), new - start.astype(np.float32)
            assert _cosine(step, honest) > max(0.45, _cosine(deltas.mean(axis=0), honest)), rnd  # FedAvg: 0.2-0.4
        start = new.astype(np.float64)
    assert set(strategy.device_momentum.momenta) == set(range(100, 110))  # one state per device, keyed by node id


def test_an_update_the_screen_excludes_never_reaches_the_state() -> None:
    rng = np.random.default_rng(3)
    strategy = SparseKrum(num_malicious_nodes=1, momentum=0.5, min_cosine=0.0, **NODES)
    deltas = _topk_round(rng)
    deltas[9] = -5 * deltas[:9].mean(axis=0)  # points away from the median where the others sent: excluded
    aggregate(strategy, [reply(100 + i, row, 10) for i, row in enumerate(deltas)], np.zeros(200))
    assert any(d.node_id == 109 and d.action == "excluded" and "cosine" in d.reason for d in strategy.decisions)
    assert 109 not in strategy.device_momentum.momenta and len(strategy.device_momentum.momenta) == 9


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"momentum": 1.0}, "strategy.momentum must be a number in \\[0, 1\\)"),
    ({"momentum": -0.1}, "strategy.momentum must be"),
    ({"momentum": True}, "strategy.momentum must be"),
    ({"momentum_scope": "global"}, "strategy.momentum_scope must be one of"),
    ({"momentum_max_nodes": 0}, "strategy.momentum_max_nodes must be an integer >= 1"),
    ({"momentum": 0.5, "fill": "trusted"}, "strategy.momentum > 0 with strategy.momentum_scope=device needs strategy.fill=all"),
])
def test_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseKrum(**kwargs)  # type: ignore[arg-type]
    SparseKrum(momentum=0.5, momentum_scope="aggregate", fill="trusted")  # server momentum composes with any fill


def test_config_keys_reach_the_strategy_and_bad_ones_name_the_key(make_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedge.conf.build import ConfigError, build_strategy

    built = build_strategy(make_cfg(["strategy=sparse_krum", "strategy.momentum=0.3", "strategy.momentum_scope=aggregate",
                                     "strategy.momentum_max_nodes=7"])).strategy
    assert (built.aggregate_momentum.beta, built.device_momentum.beta, built.device_momentum.max_nodes) == (0.3, 0.0, 7)
    with pytest.raises(ConfigError, match="strategy.momentum must be a number in"):
        build_strategy(make_cfg(["strategy=sparse_krum", "strategy.momentum=1.5"]))
