"""backend=ray: the same Grid over pinned Ray actors, equal to local for the same seed (must-show 2).

One private, loopback-only Ray instance (4 logical CPUs) serves the whole module.
"""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedge.client import TrainConfig
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.ray_grid import RayGrid, start_ray
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    started = start_ray(None, num_cpus=4)
    yield ray
    if started:
        ray.shutdown()


def test_four_actors_match_local_bit_for_bit(ray_instance, make_cfg):
    """topk with error feedback: each client's residual must stay with it across rounds."""
    from fedge.simulations.experiment import run_experiment

    common = ["progress=false", "rounds=3", "num_clients=6", "compression=topk", "compression.ratio=0.1", "seed=3"]
    on_ray = run_experiment(make_cfg([*common, "backend=ray", "backend.num_actors=4"]))
    local = run_experiment(make_cfg([*common, "backend.num_workers=2"]))
    assert on_ray.result.final.accuracy == local.result.final.accuracy
    assert on_ray.final_weights.keys() == local.final_weights.keys()
    for name in local.final_weights:
        assert np.array_equal(on_ray.final_weights[name], local.final_weights[name]), name
    assert [r.uplink_bytes for r in on_ray.result.rounds] == [r.uplink_bytes for r in local.result.rounds]
    assert all(r.replies == 6 for r in on_ray.result.rounds[1:])
    assert on_ray.result.final.accuracy > on_ray.result.rounds[0].accuracy + 0.2  # it really trained


def test_device_profiles_and_deadline_match_local_on_ray(ray_instance, make_cfg):
    """The device simulation sits in FedgeGrid: Ray prices and drops exactly as local does."""
    from fedge.simulations.experiment import run_experiment

    common = ["progress=false", "rounds=2", "num_clients=6", "device=mix_wearable_phone_gateway",
              "server.round_deadline_s=2", "client.local_epochs=1"]
    on_ray = run_experiment(make_cfg([*common, "backend=ray", "backend.num_actors=2"]))
    local = run_experiment(make_cfg([*common, "backend.num_workers=0"]))
    simulated = [(r.sim_round_s, r.energy_j, r.stragglers, r.unavailable, r.replies) for r in local.result.rounds[1:]]
    assert [(r.sim_round_s, r.energy_j, r.stragglers, r.unavailable, r.replies) for r in on_ray.result.rounds[1:]] == simulated
    assert all(r[2] > 0 for r in simulated)  # wearables were dropped in every round
    for name in local.final_weights:
        assert np.array_equal(on_ray.final_weights[name], local.final_weights[name]), name


def _recipe(clients=4):
    parts = np.array_split(np.arange(200), clients)
    return ClientRecipe(DigitsTask(), {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=1))


def _train_messages(grid, server_round=1):
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4))
    initial = ArrayRecord(DigitsTask().build_model().state_dict())
    return list(strategy.configure_train(server_round, initial, ConfigRecord(), grid))


def test_clients_are_pinned_to_actors(ray_instance):
    with RayGrid(_recipe(), num_actors=2) as grid:
        assert grid.num_actors == 2
        assert grid._actor_of == {node_id_of(i): i % 2 for i in range(4)}
        messages = _train_messages(grid)
        replies = grid.send_and_receive(messages)
        assert [r.metadata.src_node_id for r in replies] == [m.metadata.dst_node_id for m in messages]
        assert not any(r.has_error() for r in replies)
        nodes = grid.traffic.nodes()
        assert sorted(nodes) == [node_id_of(i) for i in range(4)]
        assert all(n.uplink_bytes > 0 and n.replies == 1 and n.compute_s > 0 for n in nodes.values())


def test_dead_actor_fails_its_clients_not_the_round(ray_instance):
    with RayGrid(_recipe(), num_actors=2) as grid:
        ray_instance.kill(grid._actors[0])
        replies = grid.send_and_receive(_train_messages(grid))
        failed = [r for r in replies if r.has_error()]
        assert len(replies) == 4 and len(failed) == 2
        assert all("did not answer" in r.error.reason for r in failed)


def test_pool_larger_than_the_cluster_is_a_clear_error(ray_instance):
    with pytest.raises(ValueError, match="CPUs do not fit"):
        RayGrid(_recipe(), num_actors=4, cpus_per_actor=8)


def test_bad_pool_settings_are_named():
    with pytest.raises(ValueError, match="num_actors"):
        RayGrid(_recipe(), num_actors=0)
