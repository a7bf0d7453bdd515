"""Compression in whole federations: every strategy, DP clipping, downlink, config."""

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from conftest import FAST
from fedge.client import TrainConfig
from fedge.protos.codecs import CodecSpec
from fedge.protos.codecs.plan import UplinkPlan
from fedge.server import run_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.conf.build import ConfigError
from fedge.simulations.experiment import run_experiment
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask
from test_strategies import STRATEGIES


#: Flower's robust rules: refused on a sparse uplink unless opted in (tests/test_sparse_rules.py); run here opted in.
FLOWER_ROBUST = {"fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_with_topk_and_error_feedback(make_cfg, strategy):
    opt_in = ["server.allow_flower_robust_on_sparse=true"] if strategy in FLOWER_ROBUST else []
    cfg = make_cfg(
        [f"strategy={strategy}", "compression=topk", "compression.ratio=0.05", "num_clients=8", "rounds=2",
         "partition=iid", "client.local_steps=5", *FAST, *opt_in]
    )
    rounds = run_experiment(cfg).result.rounds
    for record in rounds[1:]:
        assert record.replies == 8 and record.dropped == 0 and record.failures == 0
    assert np.isfinite(rounds[-1].loss)


def test_config_composes_the_issue_example(make_cfg):
    from fedge.protos.codecs.compression_setup import compression_setup
    from omegaconf import OmegaConf

    cfg = make_cfg(["compression=topk", "compression.ratio=0.01", "compression.values=q8"])
    setup = compression_setup(OmegaConf.to_container(cfg.compression))
    assert setup.uplink.codec == CodecSpec("topk", {"ratio": 0.01, "values": "q8", "scope": "global"})
    assert setup.uplink.error_feedback is True
    assert (setup.uplink.dense_below, setup.uplink.fallback) == (256, "q8")  # biases go dense in 8 bits


@pytest.mark.parametrize("group", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "compression").glob("*.yaml")))
def test_every_compression_asks_devices_only_for_codecs_a_device_declares(make_cfg, group):
    """fedge-server refuses a device lacking a required codec: the names it requires must be
    the registered ones a device declares at join (``q8`` is an alias of ``uniform``)."""
    from fedge.protos.codecs import available
    from fedge.protos.codecs.compression_setup import compression_setup, required_codecs
    from omegaconf import OmegaConf

    setup = compression_setup(OmegaConf.to_container(make_cfg([f"compression={group}"]).compression))
    assert set(required_codecs(setup.uplink, setup.downlink)) <= set(available())


def test_unknown_codec_in_config_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="zip"):
        run_experiment(make_cfg(["compression.codec=zip", *FAST]))
    with pytest.raises(ConfigError, match="bits"):
        run_experiment(make_cfg(["compression=q8", "compression.bits=12", *FAST]))


@pytest.fixture(scope="module")
def small_federation():
    task = DigitsTask()
    data = task.load()
    parts = np.array_split(np.random.default_rng(0).permutation(len(data.train)), 6)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=5), seed=0)
    return task, data, recipe


def test_dp_client_side_clipping_then_compression(small_federation):
    task, data, recipe = small_federation
    clip = 0.05
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=6), noise_multiplier=0.0, clipping_norm=clip, num_sampled_clients=6
    )
    strategy = CompressedStrategy(dp, uplink=UplinkPlan(CodecSpec("topk", {"ratio": 0.05, "values": "fp32"}), True))
    initial = ArrayRecord(task.build_model().state_dict())
    with LocalGrid(recipe) as grid:
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 2, ConfigRecord())
    assert all(r.replies == 6 and r.dropped == 0 for r in result.rounds[1:])
    # Clients saw the clipping norm and clipped before compressing: their raw norms were larger
    # than the clip, yet the aggregate of top-k-compressed clipped updates is within it.
    train_metrics = result.flower_result.train_metrics_clientapp
    assert all(train_metrics[r]["update_norm"] > clip for r in (1, 2))
    before = {k: v.numpy() for k, v in initial.items()}
    after = {k: v.numpy() for k, v in result.final_arrays.items()}
    first_round = np.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))
    assert first_round <= 2 * clip + 1e-6  # two rounds, each an average of updates of norm <= clip


def test_downlink_delta_devices_hold_exactly_what_the_server_meant(small_federation):
    task, data, recipe = small_federation
    recipe = ClientRecipe(task, recipe.partitions, recipe.defaults, seed=1)
    strategy = CompressedStrategy(
        FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_available_nodes=6, min_train_nodes=3),
        uplink="q8",
        downlink="q8",
        downlink_delta=True,
    )
    initial = ArrayRecord(task.build_model().state_dict())
    import random

    random.seed(3)
    seen_delta = []
    with LocalGrid(recipe) as grid:
        original = grid._deliver

        def checking_deliver(tasks):
            answers = original(tasks)
            server_round = max(strategy._reference)
            meant = strategy._reference[server_round]
            for node_id, payload in tasks:
                client = recipe.client(node_id)
                from fedge.protos.v1 import task_pb2

                kind = task_pb2.Task.FromString(payload.serialised()).model.kind
                seen_delta.append((kind, len(payload)))
                assert client.held_round == server_round
                for name in meant:
                    assert np.array_equal(client._held[name], meant[name]), name
            return answers

        grid._deliver = checking_deliver
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 5, ConfigRecord())
    from fedge.protos.v1 import tensor_pb2

    sizes = {kind: [n for k, n in seen_delta if k == kind] for kind in (tensor_pb2.UPDATE_KIND_DELTA, tensor_pb2.UPDATE_KIND_WEIGHTS)}
    assert sizes[tensor_pb2.UPDATE_KIND_DELTA] and sizes[tensor_pb2.UPDATE_KIND_WEIGHTS]
    assert all(r.failures == 0 and r.dropped == 0 for r in result.rounds[1:])
    # an 8-bit delta broadcast is about a quarter of the fp32 weights a new device gets
    assert max(sizes[tensor_pb2.UPDATE_KIND_DELTA]) < 0.3 * min(sizes[tensor_pb2.UPDATE_KIND_WEIGHTS])
