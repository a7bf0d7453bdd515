"""FedAvg's mean folded in reply by reply gives Flower's numbers, bit for bit."""

import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, FedTrimmedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedge.client import TrainConfig
from fedge.protos.codecs import CodecSpec
from fedge.protos.codecs.plan import UplinkPlan
from fedge.server import run_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.strategies import CompressedStrategy
from fedge.strategies.streamed_mean import streams_weighted_mean, weighted_mean
from tests.test_compressed_strategy import CorruptingGrid, setup  # noqa: F401 - the module's fixture


@pytest.mark.parametrize("weights", [[3, 1, 7, 2, 5], [0.25, 1.5, 3.0, 1e-3, 9.75]])
def test_weighted_mean_is_aggregate_arrayrecords(weights):
    rng = np.random.default_rng(0)
    shapes = {"w": (17, 9), "b": (9,), "scalar": (), "half": (33,)}
    replies = [
        {k: rng.standard_normal(s).astype(np.float16 if k == "half" else np.float32) for k, s in shapes.items()}
        for _ in weights
    ]
    flower = aggregate_arrayrecords(
        [
            RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in r.items()}), "m": MetricRecord({"num-examples": w})})
            for r, w in zip(replies, weights)
        ],
        "num-examples",
    )
    ours = weighted_mean(iter(replies), list(weights))
    assert list(ours.keys()) == list(flower.keys())
    for k in flower.keys():
        a, b = ours[k].numpy(), flower[k].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k


def test_only_fedavg_own_aggregation_streams():
    class Overridden(FedAvg):
        def aggregate_train(self, server_round, replies):
            return super().aggregate_train(server_round, replies)

    assert streams_weighted_mean(FedAvg()) and streams_weighted_mean(FedProx())
    assert not streams_weighted_mean(Overridden())
    assert not streams_weighted_mean(FedAdam()) and not streams_weighted_mean(FedTrimmedAvg())


class DenseFedAvg(FedAvg):
    """FedAvg with ``aggregate_train`` overridden: CompressedStrategy gives it every reply dense."""

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, replies)


@pytest.mark.parametrize("uplink", ["fp32", "topk"])
@pytest.mark.parametrize("kept_replies", ["all", "one", "none"])
def test_streamed_rounds_equal_dense_rounds(setup, uplink, kept_replies, monkeypatch):  # noqa: F811 - the fixture
    task, data, _, initial = setup
    # decoded deltas kept from validation to the fold (all of them, one a round, none: each decoded again)
    model_bytes = sum(v.numpy().nbytes for v in initial.values())
    budget = {"all": 1 << 30, "one": model_bytes, "none": 0}[kept_replies]
    monkeypatch.setattr("fedge.strategies.compressed.KEEP_DECODED_BYTES", budget)
    import fedge.strategies.compressed as compressed

    decoded_again = []
    original = compressed.decode_delta
    monkeypatch.setattr(compressed, "decode_delta", lambda *a: decoded_again.append(1) or original(*a))
    plan = (
        UplinkPlan(CodecSpec("topk", {"ratio": 0.05, "values": "q8", "scope": "global"}), error_feedback=True)
        if uplink == "topk"
        else UplinkPlan(CodecSpec("fp32"))
    )
    outcomes = []
    for inner in (FedAvg, DenseFedAvg):
        random.seed(0)  # Flower samples nodes with `random`: the same nodes, in the same order
        parts = np.array_split(np.arange(len(data.train)), 4)  # fresh clients: no error-feedback residuals yet
        recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=3))
        strategy = CompressedStrategy(inner(fraction_evaluate=0.0, min_available_nodes=4), uplink=plan)
        with CorruptingGrid(recipe) as grid:  # one reply per round is junk: dropped, the others averaged
            result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 3, ConfigRecord())
        outcomes.append(result)
    streamed, dense = outcomes
    folded = sum(r.replies for r in streamed.rounds[1:])
    assert len(decoded_again) == {"all": 0, "one": folded - 3, "none": folded}[kept_replies]
    if uplink == "fp32":  # a cut fp32 tensor is refused; a top-k payload cut at its end may still parse
        assert [r.dropped for r in streamed.rounds[1:]] == [r.dropped for r in dense.rounds[1:]] == [1, 1, 1]
    for name in dense.final_arrays.keys():
        assert streamed.final_arrays[name].numpy().tobytes() == dense.final_arrays[name].numpy().tobytes(), name
    assert [(r.train_loss, r.accuracy) for r in streamed.rounds] == [(r.train_loss, r.accuracy) for r in dense.rounds]
