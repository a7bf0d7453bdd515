"""CompressedStrategy with a real FedAvg over a LocalGrid: encoding, decoding, drops."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedge.client import TrainConfig
from fedge.protos import records
from fedge.server import run_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask


class CorruptingGrid(LocalGrid):
    """A grid whose first node sends junk instead of a valid update."""

    def _deliver(self, tasks):
        answers = super()._deliver(tasks)
        if not answers:
            return answers
        from tests.hostile_grid import honest_update

        update = honest_update(answers[0])
        update.update.tensors[0].data = update.update.tensors[0].data[:-4]
        answers[0] = update.SerializeToString()
        return answers


@pytest.fixture(scope="module")
def setup():
    task = DigitsTask()
    data = task.load()
    parts = np.array_split(np.arange(len(data.train)), 4)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=3))
    initial = ArrayRecord(task.build_model().state_dict())
    return task, data, recipe, initial


def test_bad_reply_is_dropped_and_round_goes_on(setup):
    task, data, recipe, initial = setup
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), uplink="fp16")
    with CorruptingGrid(recipe) as grid:
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 2, ConfigRecord())
    for record in result.rounds[1:]:
        assert record.dropped == 1 and record.replies == 3
    assert all("MalformedPayloadError" in d.reason for d in strategy.log.dropped)
    assert len(strategy.log.dropped) == 2


def test_broadcast_is_encoded_once_and_carries_the_codec_spec(setup):
    task, data, recipe, initial = setup
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), uplink="fp16")
    with LocalGrid(recipe) as grid:
        messages = list(strategy.configure_train(1, initial, ConfigRecord(), grid))
        assert len(messages) == 4
        payloads = {id(m.content.config_records[records.MODEL_RECORD][records.PAYLOAD]) for m in messages}
        assert len(payloads) == 1
        config = messages[0].content.config_records["config"]
        assert config["fedge.codec"] == "fp16" and not messages[0].content.array_records


def test_fp16_uplink_halves_bytes_against_fp32(setup):
    task, data, recipe, initial = setup
    totals = {}
    for codec in ("fp32", "fp16"):
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=4), uplink=codec)
        with LocalGrid(recipe) as grid:
            result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 1, ConfigRecord())
        totals[codec] = result.rounds[1].uplink_bytes
    assert 0.45 < totals["fp16"] / totals["fp32"] < 0.55
