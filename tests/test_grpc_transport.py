"""The Federation service over real gRPC on 127.0.0.1 (issue 5, must-shows 4 and 6).

Devices run as DeviceRuntime threads here (the subprocess paths are in
test_grpc_processes.py); every byte still crosses a real loopback gRPC channel.
"""

from __future__ import annotations

import math
import time

import grpc
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_helpers import DEVICES, device_credentials, make_certs, split_evenly, start_device, start_server, wait_until
from torch import nn

from fedge.client import TrainConfig
from fedge.client.connection import Connection, DeviceCredentials
from fedge.client.model_io import model_arrays
from fedge.client.runtime import EXIT_OK, EXIT_REFUSED
from fedge.protos.transfer import DEFAULT_CHUNK_BYTES, chunks, wire_bytes
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.protos.v1 import task_pb2
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.conf.schema import ServerConfig
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import run_federation
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.transport import FederationServer, ServerCredentials
from fedge.strategies import CompressedStrategy
from fedge.tasks.base import FederatedTask, Split
from fedge.tasks.digits import DigitsTask

DIGITS = DigitsTask()
DATA = DIGITS.load()
SHARDS = split_evenly(DATA.train.subset(np.arange(300)), len(DEVICES))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertDir:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def rogue(tmp_path_factory) -> CertDir:
    """Another CA, issuing a certificate for a device id the real federation knows."""
    root = tmp_path_factory.mktemp("rogue")
    create_federation(root)
    issue_devices(root, ["1000"])
    return CertDir(root)


def fedavg():
    """FedAvg that starts with whatever devices are there (Flower waits forever for fewer)."""
    return FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)


def train_messages(grid, strategy, server_round=1):
    torch.manual_seed(0)
    initial = ArrayRecord(DIGITS.build_model().state_dict())
    return list(strategy.configure_train(server_round, initial, ConfigRecord(TrainConfig(local_steps=2).to_config()), grid))


def test_health_service_reports_serving(certs):
    server = start_server(None)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "fedge.v1.Federation"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()


def test_client_certificate_not_signed_by_the_ca_is_refused_at_the_handshake(certs, rogue):
    server = start_server(certs)
    try:
        impostor = Connection(server.address, "1000", DeviceCredentials.from_files(certs.ca, rogue.device("1000"), rogue.device_key("1000")))
        with pytest.raises(grpc.RpcError) as refused:
            impostor.join("1000", {}, ["fp32"], timeout_s=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # no RPC ever reached the service
        impostor.close()
        with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(certs.ca.read_bytes())) as bare:
            join = bare.unary_unary("/fedge.v1.Federation/Join")
            with pytest.raises(grpc.RpcError) as no_cert:
                join(fpb.JoinRequest(device_id="1001", protocol_version=1).SerializeToString(), timeout=5)
            assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.registry.live_node_ids() == [] and not server.registry.knows(1000)
        genuine = Connection(server.address, "ignored", device_credentials(certs, "1001"))
        reply = genuine.join("claims-to-be-1002", {}, ["fp32"], timeout_s=10)
        genuine.close()
        assert reply.node_id == 1001  # the identity comes from the certificate, not the request
        assert server.registry.live_node_ids() == [1001]
    finally:
        server.stop()


def test_a_broadcast_whose_signature_does_not_verify_is_refused_and_the_model_kept(certs):
    wrong_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    good = ServerCredentials.from_dir(certs.root)
    forged = ServerCredentials(good.ca, good.certificate, good.private_key, good.signing_certificate, wrong_key)
    server = start_server(certs, credentials=forged)
    runtime, thread, status = start_device(server, certs, "1000", DIGITS, SHARDS[0])
    try:
        grid = GrpcGrid(server)
        grid.wait_for_nodes(1, timeout_s=30)
        wait_until(lambda: runtime.client is not None, what="the device's client")
        before = model_arrays(runtime.client.model)
        replies = grid.send_and_receive(train_messages(grid, CompressedStrategy(fedavg())))
        assert len(replies) == 1 and replies[0].has_error()
        assert "signature does not verify" in replies[0].error.reason  # the device reported why
        assert runtime.stats.refused == 1 and runtime.stats.tasks == 0
        assert "signature" in runtime.stats.last_refusal
        after = model_arrays(runtime.client.model)
        assert all(np.array_equal(before[k], after[k]) for k in before)  # previous model kept
    finally:
        runtime.stop()
        thread.join(timeout=10)
        server.stop()
    assert status == [EXIT_OK]


def test_pushes_are_idempotent_by_task_id(certs):
    server = start_server(certs)
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        node = conn.join("1000", {}, ["fp32"], timeout_s=10).node_id
        task = task_pb2.Task(task_id="t-1", kind="train", server_round=1, node_id=node).SerializeToString()
        outgoing = server.outgoing(node, 1, "t-1", task)
        server.board.post([outgoing])
        pulled = conn.pull(wait_s=5, max_task_bytes=1 << 20, transfer_timeout_s=10)
        assert pulled.header.status == fpb.PULL_STATUS_TASK and pulled.payload == task
        update = task_pb2.Update(task_id="t-1", node_id=node, metrics={"num-examples": 1.0}).SerializeToString()
        first, sent = conn.push("t-1", update, 1024, timeout_s=10)
        again, _ = conn.push("t-1", update, 1024, timeout_s=10)  # a retry after a lost reply
        assert first.accepted and not first.duplicate and again.accepted and again.duplicate
        assert outgoing.answer == update and outgoing.uplink_wire_bytes == sent
        late = task_pb2.Update(task_id="t-2", node_id=node).SerializeToString()
        server.board.post([server.outgoing(node, 2, "t-2", b"")])
        server.board.withdraw([server.outgoing(node, 2, "t-2", b"")])
        expired, _ = conn.push("t-2", late, 1024, timeout_s=10)
        assert not expired.accepted and "expired" in expired.reason
    finally:
        conn.close()
        server.stop()


def test_round_ends_early_when_a_device_leaves_and_is_abandoned_below_the_reply_fraction(certs):
    for fraction, abandoned in ((0.5, False), (1.0, True)):
        server = start_server(certs, min_reply_fraction=fraction, round_timeout_s=60.0)
        devices = [start_device(server, certs, d, DIGITS, s) for d, s in zip(DEVICES, SHARDS)]
        try:
            grid = GrpcGrid(server)
            grid.wait_for_nodes(3, timeout_s=30)
            strategy = CompressedStrategy(fedavg())
            messages = train_messages(grid, strategy)
            devices[2][0].stop()  # leaves before answering
            devices[2][1].join(timeout=10)
            start = time.monotonic()
            replies = grid.send_and_receive(messages)
            assert time.monotonic() - start < 30  # not the 60 s deadline: a device that left is not waited for
            errors = [r.error.reason for r in replies if r.has_error()]
            if abandoned:
                assert len(errors) == 3 and grid.abandoned_rounds == [1]
                assert sum("abandoned: 2 of 3 devices answered" in e for e in errors) == 2
            else:
                assert len(errors) == 1 and "did not answer" in errors[0] and grid.abandoned_rounds == []
        finally:
            for runtime, thread, _ in devices:
                runtime.stop()
                thread.join(timeout=10)
            server.stop()


def test_device_reconnects_after_a_server_restart_and_keeps_its_client(certs):
    server = start_server(certs)
    port = server.port
    runtime, thread, status = start_device(server, certs, "1000", DIGITS, SHARDS[0])
    try:
        wait_until(lambda: runtime.client is not None, what="the device's client")
        client = runtime.client
        server.stop(grace_s=0)
        server = start_server(certs, address=f"127.0.0.1:{port}")
        grid = GrpcGrid(server)
        grid.wait_for_nodes(1, timeout_s=30)  # it came back on its own (backoff with jitter)
        replies = grid.send_and_receive(train_messages(grid, CompressedStrategy(fedavg())))
        assert not replies[0].has_error()
        assert runtime.client is client and runtime.stats.joins == 2 and runtime.stats.reconnects >= 1
    finally:
        runtime.stop()
        thread.join(timeout=10)
        server.stop()
    assert status == [EXIT_OK]


def test_join_is_refused_for_a_codec_the_device_lacks():
    server = start_server(None, codecs=("fp32", "no-such-codec"))
    runtime, thread, status = start_device(server, None, "1000", DIGITS, SHARDS[0])
    thread.join(timeout=30)
    server.stop()
    assert status == [EXIT_REFUSED]


def test_insecure_mode_serves_loopback_only():
    with pytest.raises(ValueError, match="loopback addresses only"):
        FederationServer(ServerConfig(address="0.0.0.0:0", insecure=True), None)


class WideTask(FederatedTask):
    """A 13.2M-parameter linear model: 52.8 MB in fp32."""

    name, num_classes = "wide", 4000
    inputs = 3300

    def load(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, self.inputs)).astype(np.float32)
        split = Split(x, rng.integers(0, self.num_classes, 8))
        from fedge.tasks.base import TaskData

        return TaskData(split, split)

    def build_model(self):
        return nn.Linear(self.inputs, self.num_classes)


def test_a_50_mb_model_passes_both_ways_in_chunks(certs):
    task = WideTask()
    data = task.load()
    server = start_server(certs, round_timeout_s=120.0)
    runtime, thread, status = start_device(server, certs, "1000", task, data.train)
    try:
        grid = GrpcGrid(server)
        grid.wait_for_nodes(1, timeout_s=30)
        torch.manual_seed(0)
        initial = ArrayRecord(task.build_model().state_dict())
        result = run_federation(
            CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)),
            grid, initial, CentralEvaluator(task, data.test), 1,
            ConfigRecord(TrainConfig(local_steps=1, batch_size=8, momentum=0.0).to_config()),
        )
    finally:
        runtime.stop()
        thread.join(timeout=30)
        server.stop()
    record = result.rounds[1]
    wire = grid.wire[1]
    assert record.replies == 1 and record.failures == 0
    assert record.downlink_bytes > 50e6 and record.uplink_bytes > 50e6
    # framing: one header + ceil(n / 1 MiB) data chunks, each with its gRPC prefix
    down = {"signature": b"s" * 64, "status": fpb.PULL_STATUS_TASK}  # the downlink header also carries these
    for payload_bytes, grpc_bytes, extra in (
        (record.downlink_bytes, wire.downlink_grpc_bytes, down),
        (record.uplink_bytes, wire.uplink_grpc_bytes, {}),
    ):
        assert math.ceil(payload_bytes / DEFAULT_CHUNK_BYTES) >= 50
        expected = wire_bytes(chunks(b"\0" * payload_bytes, "x" * 32, DEFAULT_CHUNK_BYTES, **extra))
        assert grpc_bytes == expected  # payload + 1 header + 51 data chunk headers + 5 B per gRPC message
    # both ends measured the same bytes
    assert runtime.stats.downlink_grpc_bytes >= wire.downlink_grpc_bytes
    assert runtime.stats.uplink_grpc_bytes == wire.uplink_grpc_bytes
    # the model really moved: the aggregate differs from the broadcast
    moved = result.final_arrays["weight"].numpy() - initial["weight"].numpy()
    assert np.abs(moved).max() > 0
