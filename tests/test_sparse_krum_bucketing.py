"""SparseKrum's bucketing (fedge.strategies.bucketing, strategy.bucket_size): seeded buckets,
Krum's precondition on the buckets, Flower's Krum on the bucket means, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import Krum
from robust_helpers import aggregate, reply

from fedge.strategies.bucketing import bucket_groups, bucket_means, krum_bucket_size, spoiled_buckets
from fedge.strategies.sparse_krum import SparseKrum

NODES = dict(min_train_nodes=2, min_available_nodes=2)


def test_buckets_partition_the_updates_and_are_drawn_from_seed_and_round() -> None:
    groups = bucket_groups(10, 3, seed=7, server_round=4)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))  # every update in exactly one bucket
    again = bucket_groups(10, 3, seed=7, server_round=4)
    assert all(np.array_equal(a, b) for a, b in zip(groups, again))  # reproducible, whatever ran before
    draws = {tuple(np.concatenate(bucket_groups(10, 3, seed, rnd)).tolist()) for seed in (7, 8) for rnd in (4, 5)}
    assert len(draws) == 4  # another round or seed: other buckets
    assert [len(g) for g in bucket_groups(4, 1, 0, 1)] == [1] * 4
    with pytest.raises(ValueError, match="bucket_size"):
        bucket_groups(4, 0, 0, 1)


def test_resampled_buckets_hold_every_update_s_times() -> None:
    groups = bucket_groups(10, 3, seed=2, server_round=1, mode="resample")
    assert len(groups) == 10 and all(len(set(g.tolist())) == 3 for g in groups)  # n buckets of s distinct updates
    assert np.bincount(np.concatenate(groups), minlength=10).tolist() == [3] * 10  # each update in exactly s of them
    assert [len(g) for g in bucket_groups(2, 3, 0, 1, "resample")] == [2, 2]  # never more than n in a bucket
    with pytest.raises(ValueError, match="mode"):
        bucket_groups(4, 2, 0, 1, "shuffle")


def test_bucket_means_are_weighted_by_examples() -> None:
    updates = np.array([[1.0, 0.0], [3.0, 4.0], [10.0, 10.0]])
    means = bucket_means(updates, np.array([1.0, 3.0, 5.0]), [np.array([0, 1]), np.array([2])])
    np.testing.assert_allclose(means, [[2.5, 3.0], [10.0, 10.0]])


@pytest.mark.parametrize(("n", "size", "f", "expected"), [
    (10, 2, 1, 2),  # 5 buckets > 2f + 2 = 4
    (10, 3, 1, 2),  # 4 buckets would not be: cut to 2
    (8, 2, 1, 1),  # 4 buckets are not > 4: no bucketing
    (10, 5, 0, 4),  # f = 0: more than 2 buckets: size 5 makes 2, 4 makes 3
    (3, 2, 1, 1),  # too few replies for Krum at all: single updates, as before
    (10, 1, 1, 1),
])
def test_bucket_size_is_cut_to_keep_krums_precondition(n: int, size: int, f: int, expected: int) -> None:
    assert krum_bucket_size(n, size, f) == expected


@pytest.mark.parametrize(("n", "size", "f", "expected"), [
    (10, 3, 1, 3),  # 10 buckets, up to 3 spoiled: 10 > 2 * 3 + 2
    (10, 4, 1, 3),  # 4 spoiled would need 11
    (8, 3, 1, 2),  # 8 > 2 * 2 + 2, not > 2 * 3 + 2
    (4, 2, 1, 1),
])
def test_resampled_buckets_count_s_spoiled_buckets_per_attacker(n: int, size: int, f: int, expected: int) -> None:
    assert krum_bucket_size(n, size, f, "resample") == expected
    assert spoiled_buckets(size, f, "resample") == size * f and spoiled_buckets(size, f) == f


@pytest.mark.parametrize(("mode", "size"), [("partition", 2), ("resample", 3)])
def test_dense_updates_krum_runs_on_the_bucket_means_as_flowers_krum(mode: str, size: int) -> None:
    """On dense updates: Flower's Krum given the bucket means (f = the spoilable buckets) returns what SparseKrum returns."""
    rng = np.random.default_rng(3)
    start = rng.normal(size=40)
    deltas = 0.1 + rng.normal(size=(10, 40)) * rng.uniform(0.05, 0.5, size=(10, 1))
    deltas[[2, 6]] += rng.normal(size=(2, 40)) * 3
    examples = rng.integers(5, 50, size=10)
    replies = [reply(100 + i, start + d, int(e)) for i, (d, e) in enumerate(zip(deltas, examples))]
    strategy = SparseKrum(num_malicious_nodes=1, bucket_size=size, bucket_mode=mode, bucket_seed=11, clip="off", **NODES)  # Flower's Krum bounds nothing
    got = aggregate(strategy, replies, start, server_round=3)
    groups = bucket_groups(10, size, seed=11, server_round=3, mode=mode)
    received = np.stack([r.content.array_records["arrays"]["w"].numpy().astype(np.float64) for r in replies]) - start.astype(np.float32)
    means = bucket_means(received, examples.astype(float), groups)
    bucket_replies = [reply(200 + b, start + m, 1) for b, m in enumerate(means)]
    arrays, _ = Krum(num_malicious_nodes=spoiled_buckets(size, 1, mode), **NODES).aggregate_train(3, bucket_replies)
    assert arrays is not None
    np.testing.assert_allclose(got, arrays["w"].numpy(), atol=2e-6)
    kept = sorted(d.node_id - 100 for d in strategy.decisions if d.action == "kept")
    assert len(kept) == size and any(sorted(g.tolist()) == kept for g in groups)  # one whole bucket selected
    assert len(strategy.decisions) == 10 and all("Krum rank" in d.reason and "bucket" in d.reason for d in strategy.decisions)
    assert all(d.reason.startswith("Krum rank 1 of") for d in strategy.decisions if d.action == "kept")


@pytest.mark.parametrize(("mode", "size"), [("partition", 2), ("resample", 3)])
def test_on_topk_updates_a_sign_flipper_is_left_out_with_its_bucket(mode: str, size: int) -> None:
    rng = np.random.default_rng(1)
    d, k = 200, 40
    direction = rng.uniform(0.5, 1.5, size=d)
    deltas = np.zeros((10, d))
    for i in range(10):
        support = rng.choice(d, k, replace=False)
        deltas[i, support] = direction[support] * rng.uniform(0.8, 1.2, size=k)
    deltas[9] *= -10  # sign-flip x10 on its own top-k coordinates
    start = np.zeros(d)
    for rnd in range(1, 6):  # whichever bucket it lands in
        strategy = SparseKrum(num_malicious_nodes=1, bucket_size=size, bucket_mode=mode, bucket_seed=0, **NODES)
        got = aggregate(strategy, [reply(100 + i, start + row, 10) for i, row in enumerate(deltas)], start, server_round=rnd)
        assert 109 not in {d.node_id for d in strategy.decisions if d.action == "kept"}
        honest = (deltas[:9] != 0).any(axis=0) & (deltas[9] == 0)
        assert np.all(got[honest] > 0)


@pytest.mark.parametrize(("mode", "replies"), [("partition", 8), ("resample", 6)])
def test_too_few_replies_for_the_buckets_fall_back_and_say_so(mode: str, replies: int) -> None:
    rng = np.random.default_rng(0)
    start = np.zeros(20)
    sent = [reply(100 + i, start + 0.1 + rng.normal(size=20) * 0.1, 10) for i in range(replies)]
    bucketed = SparseKrum(num_malicious_nodes=1, bucket_size=2, bucket_mode=mode, **NODES)
    plain = SparseKrum(num_malicious_nodes=1, bucket_size=1, **NODES)
    np.testing.assert_allclose(aggregate(bucketed, sent, start), aggregate(plain, sent, start), atol=1e-7)
    (note,) = [d for d in bucketed.decisions if d.node_id == -1]
    assert "bucket_size 2 -> 1" in note.reason and "f = 1" in note.reason


def test_the_default_is_the_setting_chosen_on_dev_seeds(make_cfg) -> None:  # type: ignore[no-untyped-def]
    """Constructor and Hydra config agree: resampled buckets of 3, updates bounded at 2 x the
    round's median norm, no momentum (bench/krum_tuning.py, third tuning, dev seeds 3-8)."""
    from fedge.conf.build import build_strategy

    built = build_strategy(make_cfg(["strategy=sparse_krum"])).strategy
    plain = SparseKrum()
    chosen = (3, "resample", "median", 2.0, 0.0)
    assert (built.bucket_size, built.bucket_mode, built.clip, built.clip_factor, built.momentum) == chosen
    assert (plain.bucket_size, plain.bucket_mode, plain.clip, plain.clip_factor, plain.momentum) == chosen


@pytest.mark.parametrize(("key", "value"), [("bucket_size", 0), ("bucket_size", 1.5), ("bucket_size", True), ("bucket_seed", -1),
                                            ("bucket_mode", "shuffle")])
def test_settings_are_checked(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"strategy.{key} must be"):
        SparseKrum(**{key: value})  # type: ignore[arg-type]


def test_config_key_is_validated_and_the_run_seed_seeds_the_buckets(make_cfg) -> None:  # type: ignore[no-untyped-def]
    from fedge.conf.build import ConfigError, build_strategy

    built = build_strategy(make_cfg(["strategy=sparse_krum", "seed=5", "strategy.bucket_size=2"]))
    assert built.strategy.bucket_size == 2 and built.strategy.bucket_seed == 5
    with pytest.raises(ConfigError, match="strategy.bucket_size must be an integer >= 1"):
        build_strategy(make_cfg(["strategy=sparse_krum", "strategy.bucket_size=0"]))
