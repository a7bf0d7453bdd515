"""A broadcast decoded once for the clients of a process answers exactly as a Task each."""

import numpy as np
import pytest

from fedge.client import EdgeClient, TrainConfig
from fedge.client.model_io import model_arrays
from fedge.client.shared_broadcast import SharedBroadcast
from fedge.protos import config_values
from fedge.protos.codecs import encode_update
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.tasks.digits import DigitsTask


@pytest.fixture(scope="module")
def digits():
    task = DigitsTask()
    return task, task.load()


def header(node_id, server_round=2, kind="train"):
    task = task_pb2.Task(task_id=f"t{node_id}", kind=kind, server_round=server_round, node_id=node_id)
    config_values.to_wire(TrainConfig(local_steps=2, batch_size=8).to_config(), task.config)
    return task


def clients(digits, count=3):
    task, data = digits
    return [EdgeClient(task, data.train.subset(np.arange(40 * i, 40 * i + 40)), node_id=i) for i in range(count)]


def test_shared_broadcast_decodes_once_and_answers_as_full_tasks(digits, monkeypatch):
    import fedge.client.shared_broadcast as shared_module

    weights = model_arrays(clients(digits, 1)[0].model)
    model = encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=1)
    decodes = []
    original = shared_module.decode_update
    monkeypatch.setattr(shared_module, "decode_update", lambda *a, **k: decodes.append(1) or original(*a, **k))

    shared = SharedBroadcast(model)
    for kind in ("train", "evaluate"):
        alone, together = clients(digits), clients(digits)
        for a, b in zip(alone, together):
            full = header(a.node_id, kind=kind)
            full.model.CopyFrom(model)
            expected, got = a.handle(full), b.handle(header(b.node_id, kind=kind), shared)
            assert not got.error
            assert got.update.SerializeToString() == expected.update.SerializeToString()
            assert {k: v for k, v in got.metrics.items() if not k.endswith("_s")} == {
                k: v for k, v in expected.metrics.items() if not k.endswith("_s")
            }
    assert len(decodes) == 1  # once for the six clients (training and evaluation both expect full weights)
    cached = shared.decode(clients(digits, 1)[0]._reference, tensor_pb2.UPDATE_KIND_WEIGHTS)
    for name, value in cached.items():  # shared, read-only and as sent, after every client trained from it
        assert not value.flags.writeable
        assert value.tobytes() == weights[name].tobytes()


def test_a_broadcast_that_does_not_fit_is_refused_by_every_client(digits):
    weights = model_arrays(clients(digits, 1)[0].model)
    name = next(iter(weights))
    bad = dict(weights, **{name: np.zeros(weights[name].size + 1, dtype=np.float32)})
    shared = SharedBroadcast(encode_update(bad, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=1))
    errors = [c.handle(header(c.node_id), shared).error for c in clients(digits)]
    assert errors[0].startswith("ShapeMismatchError") and name in errors[0]
    assert errors == [errors[0]] * 3
