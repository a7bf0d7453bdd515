"""The sparse-aware robust rules (fedge.strategies.delta_aggregation and its subclasses)
on hand-made update matrices: sender masks, scaling, trimming, clipping, screening."""

from __future__ import annotations

import numpy as np
import pytest
from robust_helpers import aggregate as _aggregate
from robust_helpers import reply as _reply

from fedge.strategies.delta_aggregation import sparse_median, sparse_trimmed_mean
from fedge.strategies.norm_bounded import NormBoundedFedAvg
from fedge.strategies.sparse_median import SparseMedian


def test_dense_columns_give_the_textbook_statistics() -> None:
    rng = np.random.default_rng(0)
    deltas = rng.normal(size=(7, 50)) + 0.1
    assert np.allclose(sparse_median(deltas), np.median(deltas, axis=0))
    ordered = np.sort(deltas, axis=0)
    assert np.allclose(sparse_trimmed_mean(deltas, 0.2), ordered[1:-1].mean(axis=0))  # floor(0.2 x 7) = 1 per end


def test_sparse_columns_use_only_their_senders_scaled_by_their_share() -> None:
    # column 0: sent by 3 of 4 devices (1, 2, 30); column 1: by nobody; column 2: by one device
    deltas = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [30.0, 0.0, 8.0], [0.0, 0.0, 0.0]])
    assert sparse_median(deltas) == pytest.approx([2.0 * 3 / 4, 0.0, 8.0 / 4])
    # a plain median of the same matrix is what collapses on top-k updates
    assert np.median(deltas, axis=0)[2] == 0.0
    assert sparse_trimmed_mean(deltas, 0.34) == pytest.approx([2.0 * 3 / 4, 0.0, 8.0 / 4])  # trims 1 per end of 3


def test_adaptive_norm_bound_clips_the_outlier_and_records_it() -> None:
    start = np.zeros(4)
    honest = [_reply(10 + i, np.full(4, 0.1 * (1 + i % 2)), 10) for i in range(4)]
    attacker = _reply(99, np.full(4, -100.0), 10)
    strategy = NormBoundedFedAvg(min_train_nodes=2, min_available_nodes=2)
    result = _aggregate(strategy, [*honest, attacker], start)
    # the attacker is cut to the median norm (0.4): its pull is that of one honest device
    assert np.all(result > -0.1), result
    assert [(d.node_id, d.action) for d in strategy.decisions] == [(99, "clipped")]


def test_cosine_screening_excludes_updates_pointing_away() -> None:
    start = np.zeros(4)
    honest = [_reply(10 + i, np.array([1.0, 1.0, 0.5, 0.2]) * (1 + 0.1 * i), 10) for i in range(4)]
    attacker = _reply(99, np.array([-1.0, -1.0, -0.5, -0.2]), 10)
    strategy = SparseMedian(min_train_nodes=2, min_available_nodes=2, min_cosine=0.0)
    _aggregate(strategy, [*honest, attacker], start)
    assert [(d.node_id, d.action) for d in strategy.decisions] == [(10, "kept"), (11, "kept"), (12, "kept"), (13, "kept"), (99, "excluded")]
    assert all("cosine" in d.reason for d in strategy.decisions)  # every device's score, kept or not


def test_screening_on_the_shared_support_catches_an_attacker_its_own_coordinates_would_hide() -> None:
    # top-k-like updates: 5 honest devices agree on coordinates 0-3 and each sends one
    # private coordinate; the attacker flips the shared ones and puts its mass on two
    # coordinates nobody else sent, where the sender-only median is its own value
    start = np.zeros(12)
    honest = []
    for i in range(5):
        update = np.zeros(12)
        update[:4] = [1.0, 0.8, 0.6, 0.4]
        update[4 + i] = 0.5
        honest.append(_reply(10 + i, update, 10))
    lie = np.zeros(12)
    lie[:4], lie[10:] = [-0.3, -0.3, -0.3, -0.3], [3.0, 3.0]
    attacker = _reply(99, lie, 10)

    def actions(quorum: float) -> dict[int, str]:
        strategy = NormBoundedFedAvg(min_train_nodes=2, min_available_nodes=2, clip="off", min_cosine=0.0, screen_quorum=quorum)
        _aggregate(strategy, [*honest, attacker], start)
        return {d.node_id: d.action for d in strategy.decisions}

    every_coordinate = actions(0.0)
    assert every_coordinate[99] == "kept"  # compared mostly with itself
    shared = actions(0.5)
    assert shared[99] == "excluded"
    assert all(shared[10 + i] == "kept" for i in range(5))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="clip"):
        SparseMedian(clip="sometimes")
    with pytest.raises(ValueError, match="min_cosine"):
        SparseMedian(min_cosine=2.0)
    with pytest.raises(ValueError, match="screen_quorum"):
        SparseMedian(screen_quorum=1.5)


def test_the_report_names_attackers_and_every_decision() -> None:
    from fedge.simulations.robust_report import robust_markdown

    results = {
        "attack": {"name": "signflip", "start_round": 1, "attackers": [1003], "backdoor_success": None},
        "robust": [
            {"server_round": 1, "node_id": 1003, "action": "excluded", "reason": "cosine to the median update -0.412 < 0.0"},
            {"server_round": 1, "node_id": 1004, "action": "kept", "reason": "cosine to the median update 0.215 >= 0.0"},
        ],
    }
    text = "\n".join(robust_markdown(results))
    assert "`signflip` from round 1, attackers [1003]" in text
    assert "| 1 | 1003 | yes | excluded | cosine to the median update -0.412 < 0.0 |" in text
    assert "| 1 | 1004 |  | kept |" in text
    assert robust_markdown({"rounds": []}) == []  # a run without attack or robust rule adds nothing
