"""EdgeClient.handle: train a round, return an encoded delta, report failures."""

import numpy as np
import pytest

from fedge.client import EdgeClient, TrainConfig
from fedge.client.model_io import model_arrays
from fedge.protos import config_values
from fedge.protos.codecs import CodecSpec, decode_update, encode_update
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.tasks.digits import DigitsTask


@pytest.fixture(scope="module")
def digits():
    task = DigitsTask()
    return task, task.load()


def make_task(weights, round_=1, config=None, kind="train"):
    task = task_pb2.Task(task_id=f"t{round_}", kind=kind, server_round=round_, node_id=1)
    task.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=round_ - 1))
    config_values.to_wire(config or {}, task.config)
    return task


def test_train_returns_delta_that_lowers_loss(digits):
    task, data = digits
    local = data.train.subset(np.arange(300))
    client = EdgeClient(task, local, node_id=1, defaults=TrainConfig(lr=0.05, local_epochs=3))
    weights = model_arrays(client.model)
    update = client.handle(make_task(weights))
    assert not update.error
    assert update.metrics["num-examples"] == 300
    assert update.metrics["local_steps"] == 3 * 10
    assert update.update.kind == tensor_pb2.UPDATE_KIND_DELTA
    delta = decode_update(update.update, weights)
    trained = {k: weights[k] + delta[k] for k in weights}
    # Loss of the trained weights on the local data is below the initial loss.
    from fedge.client.model_io import load_arrays
    from fedge.tasks.base import evaluate

    load_arrays(client.model, weights)
    before, _ = evaluate(client.model, task, local)
    load_arrays(client.model, trained)
    after, _ = evaluate(client.model, task, local)
    assert after < before * 0.8


def test_round_config_overrides_defaults_and_selects_codec(digits):
    task, data = digits
    client = EdgeClient(task, data.train.subset(np.arange(64)), node_id=2, defaults=TrainConfig(local_epochs=5))
    weights = model_arrays(client.model)
    config = {**TrainConfig(local_steps=3, batch_size=16).to_config(), **CodecSpec("fp16").to_config()}
    update = client.handle(make_task(weights, config=config))
    assert not update.error
    assert update.metrics["local_steps"] == 3
    assert {t.codec for t in update.update.tensors} == {"fp16"}


def test_same_round_same_seed_gives_identical_delta(digits):
    task, data = digits
    local = data.train.subset(np.arange(100))
    a = EdgeClient(task, local, node_id=3, seed=5)
    b = EdgeClient(task, local, node_id=3, seed=5)
    weights = model_arrays(a.model)
    ua, ub = a.handle(make_task(weights, 4)), b.handle(make_task(weights, 4))
    assert ua.update.SerializeToString() == ub.update.SerializeToString()
    uc = a.handle(make_task(weights, 5))
    assert uc.update.SerializeToString() != ua.update.SerializeToString()


def test_bad_tasks_become_error_updates(digits):
    task, data = digits
    client = EdgeClient(task, data.train.subset(np.arange(10)), node_id=4)
    weights = model_arrays(client.model)
    wrong = dict(weights)
    wrong.pop(next(iter(wrong)))
    update = client.handle(make_task(wrong))
    assert "ShapeMismatchError" in update.error and not update.HasField("update")
    update = client.handle(make_task(weights, kind="fly"))
    assert "unknown task kind" in update.error
    update = client.handle(make_task(weights, config={"client.lr": "fast"}))
    assert "client.lr" in update.error


def test_evaluate_task_reports_accuracy(digits):
    task, data = digits
    client = EdgeClient(task, data.test, node_id=5)
    update = client.handle(make_task(model_arrays(client.model), kind="evaluate"))
    assert not update.error
    assert 0.0 <= update.metrics["accuracy"] <= 1.0
    assert update.metrics["num-examples"] == len(data.test)


def test_fedprox_term_pulls_towards_global(digits):
    task, data = digits
    local = data.train.subset(np.arange(200))
    norms = []
    for mu in (0.0, 10.0):
        client = EdgeClient(task, local, node_id=6, defaults=TrainConfig(lr=0.05, local_epochs=3))
        weights = model_arrays(client.model)
        update = client.handle(make_task(weights, config={"proximal-mu": mu}))
        delta = decode_update(update.update, weights)
        norms.append(np.sqrt(sum(float((d**2).sum()) for d in delta.values())))
    assert norms[1] < norms[0]
