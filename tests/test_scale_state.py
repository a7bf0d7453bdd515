"""Lean simulation state: what a simulated client keeps between rounds, counted.

Under ``compression=topk`` with error feedback, after clients have trained, the memory
reachable from the clients (numpy arrays and torch tensors, each buffer counted once
however many clients share it; the clients' own data and the task excluded) is at most
1.5x the model's fp32 size per client: the residual, not copies of the model.
A shared broadcast's task counts its real serialised bytes.
"""

from __future__ import annotations

import random
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from conftest import FAST
from fedge.conf.build import build_strategy
from fedge.protos import records
from fedge.server import run_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.server.identity import DEFAULT_RUN_ID, ensure_task_identity
from fedge.server.message_translation import message_to_task, model_payload, task_header, with_message_id
from fedge.simulations.broadcast import SplitTask
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask
from bench.client_state import state_bytes
from fedge.client import TrainConfig
from fedge.client.train_config import QATConfig

CLIENTS = 30


def test_per_client_state_under_topk_with_error_feedback_is_at_most_1_5x_the_model(make_cfg):
    cfg = make_cfg(["compression=topk", f"num_clients={CLIENTS}", *FAST])
    strategy = build_strategy(cfg, 64)
    task = DigitsTask()
    data = task.load()
    parts = np.array_split(np.arange(len(data.train)), CLIENTS)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=2))
    recipe.use_data(data)
    model = task.build_model()
    model_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    random.seed(0)
    with LocalGrid(recipe) as grid:
        run_federation(strategy, grid, ArrayRecord(model.state_dict()), CentralEvaluator(task, data.test), 2, ConfigRecord())
    clients = [recipe.client(n) for n in recipe.partitions]
    assert all(c.uplink.residual for c in clients)  # error feedback is on: each keeps its residual
    assert len({id(c.trainer) for c in clients}) == 1  # one model for the process
    assert all(c._held is None for c in clients)  # no downlink deltas: no copy of the model kept
    per_client = state_bytes(clients) / CLIENTS
    assert 0.9 * model_bytes < per_client <= 1.5 * model_bytes


def test_downlink_deltas_keep_the_model_and_train_under_qat_keeps_a_runtime_per_client():
    task = DigitsTask()
    parts = {node_id_of(i): np.arange(i * 20, i * 20 + 20) for i in range(3)}
    assert ClientRecipe(task, parts, TrainConfig(local_steps=1)).shared_trainer("torch") is not None
    qat = TrainConfig(local_steps=1, qat=QATConfig(bits=8))
    assert ClientRecipe(task, parts, qat).shared_trainer("torch") is None
    strategy = CompressedStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), uplink="q8", downlink="q8", downlink_delta=True
    )
    recipe = ClientRecipe(task, parts, TrainConfig(local_steps=1))
    with LocalGrid(recipe) as grid:
        initial = ArrayRecord(task.build_model().state_dict())
        for server_round in (1, 2):
            messages = list(strategy.configure_train(server_round, initial, ConfigRecord(), grid))
            replies = grid.send_and_receive(messages)
            assert not any(r.has_error() for r in replies)
            initial, _ = strategy.aggregate_train(server_round, replies)
    assert all(recipe.client(n)._held is not None for n in parts)


def test_split_task_counts_the_real_serialised_size():
    ensure_task_identity(DEFAULT_RUN_ID)  # what a Grid does before Messages are made
    config = ConfigRecord({"client.lr": 0.1, "note": "x" * 300})
    message = Message(RecordDict({"arrays": ArrayRecord(DigitsTask().build_model().state_dict()), records.CONFIG_RECORD: config}),
                      dst_node_id=1234, message_type="train")
    message = with_message_id(message, "m1")
    whole = message_to_task(message).SerializeToString()
    split = SplitTask(task_header(message).SerializeToString(), model_payload(message))
    assert len(split) == len(whole) > len(split.model)
    assert split.task() == message_to_task(message)
    assert type(message_to_task(message)).FromString(split.serialised()) == message_to_task(message)
