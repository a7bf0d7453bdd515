"""AsyncGrpcGrid over real gRPC on 127.0.0.1 with mTLS (issue 13): per-device submit,
completions in arrival order, hostile pushes refused with a reason, tasks in flight
offered again after a server restart.

Devices run as DeviceRuntime threads (the process-level run with fedge-server killed
by SIGKILL is in test_async_grpc_processes.py).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from grpc_helpers import DEVICES, device_credentials, make_certs, split_evenly, start_device, start_server, wait_until

from fedge.client import TrainConfig
from fedge.client.connection import Connection
from fedge.protos import records
from fedge.protos.v1 import task_pb2
from fedge.server.async_grpc_grid import AsyncGrpcGrid
from fedge.server.certs import CertDir
from fedge.tasks.digits import DigitsTask

DIGITS = DigitsTask()
SHARDS = split_evenly(DIGITS.load().train.subset(np.arange(300)), len(DEVICES))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertDir:
    return make_certs(tmp_path_factory.mktemp("certs"))


def train_message(node_id: int, version: int, local_steps: int = 2) -> Message:
    torch.manual_seed(0)
    arrays = ArrayRecord(DIGITS.build_model().state_dict())
    config = ConfigRecord({**TrainConfig(local_steps=local_steps).to_config(), "server-round": version + 1})
    return Message(RecordDict({"arrays": arrays, records.CONFIG_RECORD: config}), node_id, "train", group_id=str(version + 1))


def test_completions_come_in_arrival_order_and_foreign_or_stale_pushes_are_refused_with_a_reason(certs):
    server = start_server(certs)
    conns = {d: Connection(server.address, d, device_credentials(certs, d)) for d in DEVICES}
    try:
        nodes = {d: c.join(d, {}, ["fp32"], timeout_s=10).node_id for d, c in conns.items()}
        grid = AsyncGrpcGrid(server)
        ids = {d: grid.submit(train_message(nodes[d], 0)) for d in DEVICES}
        assert grid.idle_node_ids() == [] and grid.next_completion(timeout_s=0.2) is None  # nothing pushed yet
        for d in DEVICES:
            pulled = conns[d].pull(wait_s=5, max_task_bytes=1 << 24, transfer_timeout_s=10)
            assert pulled.header.task_id == ids[d]
        # a device answering another device's task: refused, the reason in the reply
        foreign = task_pb2.Update(task_id=ids["1001"], node_id=nodes["1000"], metrics={"num-examples": 1.0})
        reply, _ = conns["1000"].push(ids["1001"], foreign.SerializeToString(), 1 << 20, timeout_s=10)
        assert not reply.accepted and "wrong node" in reply.reason
        pushed = ["1002", "1000", "1001"]  # not the submit order
        for d in pushed:
            update = task_pb2.Update(task_id=ids[d], node_id=nodes[d], metrics={"num-examples": 1.0})
            reply, _ = conns[d].push(ids[d], update.SerializeToString(), 1 << 20, timeout_s=10)
            assert reply.accepted
        got = [grid.next_completion(timeout_s=10) for _ in pushed]
        assert [r.metadata.src_node_id for r in got] == [nodes[d] for d in pushed]
        assert [r.metadata.reply_to_message_id for r in got] == [ids[d] for d in pushed]
        assert grid.next_completion(timeout_s=0.1) is None and grid.completed == 3
        # a cancelled task: a late push is refused as expired, and no reply is handed out
        late = grid.submit(train_message(nodes["1000"], 1))
        conns["1000"].pull(wait_s=5, max_task_bytes=1 << 24, transfer_timeout_s=10)
        grid.cancel([late])
        update = task_pb2.Update(task_id=late, node_id=nodes["1000"], metrics={"num-examples": 1.0})
        reply, _ = conns["1000"].push(late, update.SerializeToString(), 1 << 20, timeout_s=10)
        assert not reply.accepted and "expired" in reply.reason
        assert grid.next_completion(timeout_s=0.1) is None and grid.idle_node_ids() == sorted(nodes.values())
    finally:
        for c in conns.values():
            c.close()
        server.stop()


def test_a_device_that_leaves_mid_task_becomes_a_failure_reply_naming_why(certs):
    server = start_server(certs)
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        node = conn.join("1000", {}, ["fp32"], timeout_s=10).node_id
        grid = AsyncGrpcGrid(server)
        grid.submit(train_message(node, 0))
        conn.leave("bye", timeout_s=10)
        reply = grid.next_completion(timeout_s=10)
        assert reply is not None and reply.has_error() and "went silent or left" in reply.error.reason
    finally:
        conn.close()
        server.stop()


def test_the_fastest_device_is_handed_the_most_work(certs):
    server = start_server(certs)
    speeds = {1000: 1.0, 1001: 4.0, 1002: 12.0}  # slowdown factors (fedge-client --slowdown)
    devices = [start_device(server, certs, d, DIGITS, s, slowdown=speeds[int(d)]) for d, s in zip(DEVICES, SHARDS)]
    try:
        grid = AsyncGrpcGrid(server)
        grid.wait_for_nodes(3, timeout_s=30)
        assert grid.get_node_ids() == sorted(speeds)
        for node in grid.idle_node_ids():
            grid.submit(train_message(node, 0))
        done: list[int] = []
        while len(done) < 12:
            reply = grid.next_completion(timeout_s=60)
            assert reply is not None and not reply.has_error(), reply and reply.error
            node = reply.metadata.src_node_id
            done.append(node)
            assert node in grid.idle_node_ids()
            grid.submit(train_message(node, len(done)))  # the newest version, at once
        counts = {n: done.count(n) for n in speeds}
        assert counts[1000] > counts[1001] >= counts[1002], counts
    finally:
        for runtime, thread, _ in devices:
            runtime.stop()
            thread.join(timeout=30)
        server.stop()


def test_a_resume_offers_the_kept_tasks_again_and_records_dispatches_it_lost(certs, tmp_path):
    """Checkpoint: one dispatch on the grid, one launched after the save (lost in a crash)."""
    from flwr.serverapp.strategy import FedAvg

    from fedge.server.async_grpc_checkpoint import AsyncCheckpointer, AsyncHistory, describe, restore_async
    from fedge.server.checkpoint import load_checkpoint
    from fedge.strategies import CompressedStrategy
    from fedge.strategies.fedbuff import FedBuffAggregator
    from fedge.strategies.fedbuff_config import FedBuffConfig

    def strategy() -> CompressedStrategy:
        return CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1))

    config = FedBuffConfig(buffer_size=2, concurrency=2)
    train = ConfigRecord(TrainConfig(local_steps=1).to_config())
    torch.manual_seed(0)
    initial = ArrayRecord(DIGITS.build_model().state_dict())
    server = start_server(certs)
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        node = conn.join("1000", {}, ["fp32"], timeout_s=10).node_id
        grid = AsyncGrpcGrid(server)
        aggregator = FedBuffAggregator(strategy(), config, initial, train, [node, 1001])
        kept_id = grid.submit(aggregator.instruction(node))
        history = AsyncHistory()
        AsyncCheckpointer(tmp_path, "fp", aggregator, grid, history, keep=2).save()
        aggregator.instruction(1001)  # launched after the save: the crash loses it
    finally:
        conn.close()
        server.stop()

    checkpoint = load_checkpoint(tmp_path, "fp")
    assert describe(checkpoint) == {"version": 0, "buffered": 0, "in_flight": 1, "open_tasks": 1, "steps": 0}
    restored, history = restore_async(checkpoint, strategy(), config, train, [node, 1001])
    assert [t.task_id for t in history.open_tasks] == [kept_id] and history.resumed["reoffered_dispatches"] == [1]
    assert list(restored.state.inflight) == [1] and restored.state.next_dispatch == 2

    server = start_server(certs)  # the restarted server
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        grid = AsyncGrpcGrid(server)
        grid.repost(history.open_tasks)  # before the device is back: the task waits for it
        assert grid.busy_node_ids() == {node}
        conn.join("1000", {}, ["fp32"], timeout_s=10)
        pulled = conn.pull(wait_s=5, max_task_bytes=1 << 24, transfer_timeout_s=10)
        assert pulled.header.task_id == kept_id and pulled.payload == history.open_tasks[0].payload
        update = task_pb2.Update(task_id=kept_id, node_id=node, error="trained elsewhere")
        reply, _ = conn.push(kept_id, update.SerializeToString(), 1 << 20, timeout_s=10)
        assert reply.accepted
        got = grid.next_completion(timeout_s=10)
        assert got is not None and got.metadata.group_id == "1" and got.metadata.reply_to_message_id == kept_id
    finally:
        conn.close()
        server.stop()


def test_fedge_server_refuses_a_strategy_fedbuff_cannot_use_before_writing_anything(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    server = str(Path(sys.executable).parent / "fedge-server")
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    for args, needle in (
        (["strategy=fedmedian"], "coordinate-wise median"),
        (["mode.concurrency=11"], "mode.concurrency=11 exceeds num_clients=10"),
        (["secagg=on"], "mode=async cannot use secagg=on"),  # the same refusal as fedge-sim's
    ):
        proc = subprocess.run([server, "mode=async", "--insecure", "server.address=127.0.0.1:0", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert list(tmp_path.iterdir()) == []


def test_fedbuff_over_grpc_with_downlink_deltas_against_what_each_device_holds(certs):
    """The async driver over GrpcFleet; the broadcast is the q8 change from the model each
    device holds (per-device server-side error feedback), which the unchanged device decodes."""
    from flwr.serverapp.strategy import FedAvg

    from fedge.protos.codecs import CodecSpec
    from fedge.protos.codecs.compression_setup import required_codecs
    from fedge.server.async_driver import run_async_federation
    from fedge.server.async_grpc_fleet import GrpcFleet
    from fedge.server.evaluation import CentralEvaluator
    from fedge.strategies import CompressedStrategy
    from fedge.strategies.fedbuff import FedBuffAggregator
    from fedge.strategies.fedbuff_config import FedBuffConfig

    compressed = CompressedStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1), downlink=CodecSpec("uniform", {"bits": 8}), downlink_delta=True
    )
    server = start_server(certs, codecs=required_codecs(compressed.uplink, compressed.downlink))
    speeds = {"1000": 1.0, "1001": 3.0, "1002": 6.0}
    devices = [start_device(server, certs, d, DIGITS, s, slowdown=speeds[d]) for d, s in zip(DEVICES, SHARDS)]
    try:
        grid = AsyncGrpcGrid(server)
        grid.wait_for_nodes(3, timeout_s=30)
        torch.manual_seed(0)
        initial = ArrayRecord(DIGITS.build_model().state_dict())
        train = ConfigRecord(TrainConfig(local_steps=5).to_config())
        aggregator = FedBuffAggregator(compressed, FedBuffConfig(buffer_size=2, concurrency=3), initial, train, grid.get_node_ids())
        evaluator = CentralEvaluator(DIGITS, DIGITS.load().test)
        result = run_async_federation(aggregator, GrpcFleet(grid), evaluator, steps=8, traffic=grid.traffic)
    finally:
        for runtime, thread, _ in devices:
            runtime.stop()
            thread.join(timeout=30)
        server.stop()
    arrivals = aggregator.log.arrivals
    assert [a.reason for a in arrivals if not a.kept] == []  # every device decoded its delta broadcast
    assert len(result.steps) == 8 and result.rounds[-1].accuracy > result.rounds[0].accuracy
    sizes = {}
    for dispatch, sent in sorted((a.dispatch, a.node_id) for a in arrivals):
        sizes.setdefault(sent, []).append(grid.traffic.round(dispatch).downlink_bytes)
    fast = sizes[1000]
    assert len(fast) >= 3 and max(fast[1:]) < fast[0] / 2  # after its first (full) model: q8 deltas


def test_hostile_pushes_over_grpc_are_dropped_with_reasons_and_never_move_the_model(certs):
    """Real pushes through the async path: a non-finite delta, a delta claiming another base,
    and an honest one; only the honest one reaches the buffer, the model is unchanged until a step."""
    from flwr.serverapp.strategy import FedAvg

    from fedge.protos.codecs import encode_update
    from fedge.protos.v1 import tensor_pb2
    from fedge.server.async_driver import Completion
    from fedge.server.async_grpc_fleet import GrpcFleet
    from fedge.strategies import CompressedStrategy
    from fedge.strategies.fedbuff import FedBuffAggregator
    from fedge.strategies.fedbuff_config import FedBuffConfig

    torch.manual_seed(0)
    initial = ArrayRecord(DIGITS.build_model().state_dict())
    model = {k: v.numpy() for k, v in initial.items()}
    server = start_server(certs)
    conns = {d: Connection(server.address, d, device_credentials(certs, d)) for d in DEVICES}
    try:
        nodes = {d: c.join(d, {}, ["fp32"], timeout_s=10).node_id for d, c in conns.items()}
        grid = AsyncGrpcGrid(server)
        compressed = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1))
        train = ConfigRecord(TrainConfig(local_steps=1).to_config())
        aggregator = FedBuffAggregator(compressed, FedBuffConfig(buffer_size=3, concurrency=3), initial, train, sorted(nodes.values()))
        fleet = GrpcFleet(grid)
        fleet.launch([aggregator.instruction(n) for n in sorted(nodes.values())])
        deltas = {
            "1000": ({k: np.full_like(v, np.nan) for k, v in model.items()}, None),  # non-finite
            "1001": ({k: np.zeros_like(v) for k, v in model.items()}, 7),  # claims a base it was not sent
            "1002": ({k: np.full_like(v, 1e-3) for k, v in model.items()}, None),  # honest
        }
        for d, conn in conns.items():
            pulled = conn.pull(wait_s=5, max_task_bytes=1 << 24, transfer_timeout_s=10)
            dispatch = task_pb2.Task.FromString(pulled.payload).server_round
            delta, base = deltas[d]
            encoded = encode_update(delta, "fp32", tensor_pb2.UPDATE_KIND_DELTA, base_round=dispatch - 1 if base is None else base)
            update = task_pb2.Update(task_id=pulled.header.task_id, node_id=nodes[d], update=encoded, metrics={"num-examples": 10.0})
            reply, _ = conn.push(pulled.header.task_id, update.SerializeToString(), 1 << 20, timeout_s=10)
            assert reply.accepted  # the transport takes well-formed bytes; the decoder judges them
        for _ in DEVICES:
            done = fleet.next_completion()
            assert isinstance(done, Completion)
            aggregator.receive(done.dispatch, done.reply, done.reason, done.time_s)
    finally:
        for c in conns.values():
            c.close()
        server.stop()
    reasons = {a.node_id: a.reason for a in aggregator.log.arrivals}
    assert "NonFiniteError" in reasons[nodes["1000"]] and reasons[nodes["1000"]].startswith("refused"), reasons
    assert "relative to round 7" in reasons[nodes["1001"]], reasons
    assert reasons[nodes["1002"]] == ""
    assert [b.node_id for b in aggregator.state.buffer] == [nodes["1002"]] and aggregator.version == 0
    assert all(np.array_equal(aggregator.state.model[k], v) for k, v in model.items())
    assert {d.node_id for d in compressed.log.dropped} == {nodes["1000"], nodes["1001"]}
