"""A server no device can crash, starve or fill (issue 11, transport half).

Real gRPC on 127.0.0.1 with mTLS everywhere; hostile devices are raw stubs that send
what a real fedge-client never would. The attackers of the starvation test and the
1 GiB push run in processes of their own (or against a server process), so what is
measured is the server, not this process's GIL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
import torch
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from grpc_helpers import device_credentials, start_device, start_server, wait_until

from fedge.client import TrainConfig
from fedge.client.client_cli import main as client_main
from fedge.client.connection import Connection
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.protos.v1 import task_pb2
from fedge.server.certs import CertDir, CertificateRefused, client_identity, create_federation, issue_certificate, issue_devices
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.taskboard import Outgoing
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HONEST, FLOODER, STALLER = ["1000", "1001"], "1002", "1003"
DIGITS = DigitsTask()
SERVICE = "/fedge.v1.Federation/"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertDir:
    root = tmp_path_factory.mktemp("certs")
    create_federation(root)
    issue_devices(root, [*HONEST, FLOODER, STALLER, "1004"])
    issue_certificate(root, "server-usage", usage=ExtendedKeyUsageOID.SERVER_AUTH)
    issue_certificate(root, "no-usage", usage=None)  # TLS accepts a certificate without usages for anything
    issue_certificate(root, "1005", hosts=("someone-else",))
    return CertDir(root)


def _join(conn: Connection, device: str) -> int:
    return conn.join(device, {}, ["fp32"], timeout_s=10).node_id


def _post(server, node: int, task_id: str, kind: str = "train") -> Outgoing:
    payload = task_pb2.Task(task_id=task_id, kind=kind, server_round=1, node_id=node).SerializeToString()
    task = server.outgoing(node, 1, task_id, payload, server.update_ceiling(task_pb2.Task.FromString(payload)))
    server.board.post([task])
    return task


# -- junk, certificates, --insecure ------------------------------------------------------
def test_junk_bytes_on_every_rpc_get_a_status_code_and_no_traceback(certs, caplog):
    server = start_server(certs)
    caplog.set_level(logging.INFO)
    channel = grpc.secure_channel(server.address, grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.device_key("1004").read_bytes(), certs.device("1004").read_bytes()))
    try:
        for _ in range(20):
            for rpc in ("Join", "Heartbeat", "Leave"):
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(SERVICE + rpc)(b"\xff\xff\xff\xff", timeout=5)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "does not parse" in refused.value.details()
            with pytest.raises(grpc.RpcError) as refused:
                list(channel.unary_stream(SERVICE + "PullTask")(b"\xff\xff", timeout=5))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert server.stats()["refusals"]["INVALID_ARGUMENT"] == 80
    finally:
        channel.close()
        server.stop()
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    complaints = [r for r in caplog.records if r.name == "fedge.server.transport" and "refused" in r.getMessage()]
    assert 1 <= len(complaints) <= 4  # one line per RPC kind, rate-limited, not 80


def test_the_server_checks_client_certificate_usage_and_names(certs):
    assert client_identity(certs.device("1000").read_bytes()) == "1000"
    with pytest.raises(CertificateRefused, match="client authentication"):
        client_identity(certs.server.read_bytes())
    with pytest.raises(CertificateRefused, match="alternative names"):
        client_identity(certs.device("1005").read_bytes())
    server = start_server(certs)
    try:
        for name, code, why in (
            ("server-usage", grpc.StatusCode.UNAVAILABLE, ""),  # TLS itself refuses a serverAuth-only certificate
            ("no-usage", grpc.StatusCode.PERMISSION_DENIED, "clientAuth"),  # TLS lets it through, the server does not
            ("1005", grpc.StatusCode.PERMISSION_DENIED, "alternative names"),
        ):
            conn = Connection(server.address, name, device_credentials(certs, name))
            with pytest.raises(grpc.RpcError) as refused:
                _join(conn, name)
            conn.close()
            assert refused.value.code() == code and why in (refused.value.details() or "")
        assert server.registry.live_node_ids() == []
    finally:
        server.stop()


def test_insecure_is_refused_off_loopback_on_both_sides(tmp_path, make_cfg, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))
    code = client_main(["--server", "10.0.0.7:8443", "--task", "digits", "--data", str(data), "--insecure", "--device-id", "a"])
    assert code == 2 and "loopback servers only" in capsys.readouterr().err
    from fedge.conf.build import ConfigError

    from fedge.server.serve import serve

    with pytest.raises(ConfigError, match="serves loopback addresses only"):
        serve(make_cfg(["server.insecure=true", "progress=false"]))  # default address 0.0.0.0:8443
    proc = subprocess.run([str(Path(sys.executable).parent / "fedge-server"), "--insecure"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "loopback addresses only" in proc.stderr and "Traceback" not in proc.stderr


# -- sessions and per-device limits ------------------------------------------------------
def test_a_second_connection_with_a_live_certificate_is_refused_until_the_first_leaves(certs):
    server = start_server(certs)
    first = Connection(server.address, "1000", device_credentials(certs, "1000"))
    second = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        node = _join(first, "1000")
        for call in (lambda: _join(second, "1000"), lambda: second.pull(1, 1 << 20, 5), lambda: second.heartbeat("", 5)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.ABORTED and "another" in refused.value.details()
        with pytest.raises(grpc.RpcError):
            second.leave("impostor says goodbye", 5)  # cannot end the real session either
        assert first.heartbeat("", 5).known and server.registry.live_node_ids() == [node]
        first.leave("done", 5)
        assert _join(second, "1000") == node  # the session is free once the first one left
    finally:
        first.close()
        second.close()
        server.stop()


def _slow(messages, pause_s: float):
    for i, message in enumerate(messages):
        if i:
            time.sleep(pause_s)
        yield message


def _device_with_a_task(server, certs) -> tuple[Connection, int, Outgoing, bytes, grpc.StreamUnaryMultiCallable]:
    """Device 1000 joined, task ``t-1`` open for it, its answer, and a raw PushUpdate call."""
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    node = _join(conn, "1000")
    task = _post(server, node, "t-1")
    update = task_pb2.Update(task_id="t-1", node_id=node, metrics={"num-examples": 1.0}).SerializeToString()
    return conn, node, task, update, conn.channel.stream_unary(SERVICE + "PushUpdate")


def test_one_push_in_flight_and_a_stalled_push_is_cut_at_the_idle_deadline(certs):
    from fedge.protos.transfer import chunks

    server = start_server(certs, stream_idle_s=1.0)
    conn, node, task, update, push = _device_with_a_task(server, certs)
    try:
        slow = [m.SerializeToString() for m in chunks(update, "t-1", 4)]
        first = push.future(_slow(slow, 0.3), timeout=30)  # ~3 s, every pause within the idle deadline
        time.sleep(0.5)
        with pytest.raises(grpc.RpcError) as second:
            push(iter(slow), timeout=10)
        assert second.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in second.value.details()
        assert fpb.PushReply.FromString(first.result()).accepted and task.answer == update
        stalled = task_pb2.Update(task_id="t-2", node_id=node).SerializeToString()
        _post(server, node, "t-2")
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as cut:
            push(_slow([m.SerializeToString() for m in chunks(stalled, "t-2", 4)], 5.0), timeout=30)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "sent nothing for 1 s" in cut.value.details()
        assert time.monotonic() - start < 4
    finally:
        conn.close()
        server.stop()


def test_a_trickling_push_is_cut_at_the_total_deadline_and_the_server_serves_on(certs):
    from fedge.protos.transfer import chunks

    server = start_server(certs, stream_idle_s=2.0, stream_total_s=1.5)
    conn, _, task, update, push = _device_with_a_task(server, certs)
    try:
        trickle = [m.SerializeToString() for m in chunks(update, "t-1", 4)]
        assert len(trickle) >= 6  # ~0.4 s apart: every pause within the idle deadline, the whole past the total
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as cut:
            push(_slow(trickle, 0.4), timeout=30)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "longer than 1.5 s" in cut.value.details()
        assert time.monotonic() - start < 3
        assert task.answer is None  # nothing of the cut push reached the task
        whole = [m.SerializeToString() for m in chunks(update, "t-1", 1 << 16)]
        assert fpb.PushReply.FromString(push(iter(whole), timeout=10)).accepted
        assert task.answer == update  # the same device, a whole push in time: served as usual
    finally:
        conn.close()
        server.stop()


def test_long_polls_are_bounded_per_device(certs):
    server = start_server(certs, max_polls_per_device=2, pull_wait_s=20.0, refusal_delay_s=0.5)
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        _join(conn, "1000")
        pull = conn.channel.unary_stream(SERVICE + "PullTask")
        calls = [pull(fpb.PullRequest(wait_s=20).SerializeToString(), timeout=30) for _ in range(2)]
        wait_until(lambda: server.stats()["open_polls"] == 2, 10, "two open polls")
        start = time.monotonic()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                list(pull(fpb.PullRequest(wait_s=20).SerializeToString(), timeout=30))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_polls_per_device" in refused.value.details()
        assert time.monotonic() - start >= 1.5  # each refusal held back by refusal_delay_s
        assert server.stats()["open_polls"] == 2
        for call in calls:
            call.cancel()
    finally:
        conn.close()
        server.stop()


# -- pushes are checked at their header ------------------------------------------------------
GIB = 1 << 30


def _huge_push(task_id: str, total: int = GIB):
    yield fpb.Chunk(header=fpb.TransferHeader(task_id=task_id, total_bytes=total, sha256=b"\0" * 32)).SerializeToString()
    block = fpb.Chunk(data=b"\0" * (1 << 20)).SerializeToString()
    for _ in range(total >> 20):
        yield block


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_a_1_gib_push_is_refused_at_its_header_before_a_mib_is_buffered(certs, tmp_path):
    """In a server process: RSS and the server's own count of buffered push bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.fleet", "serve", "--certs", str(certs.root), "--rounds", "0"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        address = json.loads(proc.stdout.readline())["address"]

        def stats() -> dict:
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        conn = Connection(address, "1000", device_credentials(certs, "1000"))
        node = _join(conn, "1000")
        push = conn.channel.stream_unary(SERVICE + "PushUpdate")
        # One refused push first: the handler's first-call allocations (code paths, gRPC's
        # transport buffers, allocator arenas) are not what a push costs; the second is measured.
        assert not fpb.PushReply.FromString(push(_huge_push("warm-up"), timeout=60)).accepted
        before = stats()
        start = time.monotonic()
        reply = fpb.PushReply.FromString(push(_huge_push("no-such-task"), timeout=60))
        elapsed = time.monotonic() - start
        after = stats()
        assert not reply.accepted and "unknown" in reply.reason
        assert elapsed < 10  # refused at the header, not after a gigabyte
        assert after["buffered_peak_bytes"] < 1 << 20
        # RSS moves in allocator steps of ~1 MiB whatever a call does; the server's own count
        # above is the exact check, RSS the coarse one (buffering the payload would add ~1 GiB).
        assert after["rss_bytes"] - before["rss_bytes"] < 4 << 20, (before, after)
        assert after["peak_rss_bytes"] - before["peak_rss_bytes"] < 4 << 20, (before, after)  # no transient copy either
        assert node == 1000
        conn.close()
    finally:
        proc.kill()
        proc.wait()


def test_a_push_larger_than_the_tasks_ceiling_is_refused_at_its_header(certs):
    server = start_server(certs)
    conn = Connection(server.address, "1000", device_credentials(certs, "1000"))
    try:
        node = _join(conn, "1000")
        task = _post(server, node, "t-1")
        assert task.max_update_bytes is not None and task.max_update_bytes < 1 << 20
        push = conn.channel.stream_unary(SERVICE + "PushUpdate")
        with pytest.raises(grpc.RpcError) as refused:
            push(_huge_push("t-1"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds this task's limit" in refused.value.details()
        assert server.stats()["buffered_peak_bytes"] == 0 and task.answer is None
    finally:
        conn.close()
        server.stop()


# -- the device loop survives a corrupt task ---------------------------------------------------
def test_a_corrupt_task_is_reported_and_the_device_loop_goes_on(certs):
    server = start_server(certs)
    runtime, thread, status = start_device(server, certs, "1000", DIGITS, DIGITS.load().train.subset(np.arange(60)))
    try:
        grid = GrpcGrid(server)
        grid.wait_for_nodes(1, timeout_s=30)
        good = task_pb2.Task(task_id="bad-1", kind="train", server_round=1, node_id=1000).SerializeToString()
        corrupt = server.outgoing(1000, 1, "bad-1", good)
        corrupt.payload = good[:-1] + bytes([good[-1] ^ 1])  # one bit flipped after signing: digest fails
        server.board.post([corrupt])
        server.board.wait([corrupt], time.monotonic() + 30)
        error = task_pb2.Update.FromString(corrupt.answer).error
        assert "SHA-256" in error and runtime.stats.refused == 1
        torch.manual_seed(0)
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1))
        messages = strategy.configure_train(1, ArrayRecord(DIGITS.build_model().state_dict()), ConfigRecord(TrainConfig(local_steps=2).to_config()), grid)
        replies = grid.send_and_receive(messages)
        assert not replies[0].has_error() and thread.is_alive() and runtime.stats.tasks == 1
    finally:
        runtime.stop()
        thread.join(timeout=10)
        server.stop()
    assert status == [0]


# -- rounds close at quorum plus grace ----------------------------------------------------------
def test_a_device_that_heartbeats_but_never_answers_cannot_hold_the_round(certs):
    server = start_server(certs, round_timeout_s=60.0, reply_grace_s=1.0, min_reply_fraction=0.5)
    honest = _honest_devices(server, certs, ["1000"])
    silent = Connection(server.address, "1001", device_credentials(certs, "1001"))
    stop = threading.Event()
    try:
        _join(silent, "1001")
        def beat() -> None:
            while not stop.wait(0.3):
                silent.heartbeat("", 5)  # alive, never pulls, never answers

        threading.Thread(target=beat, daemon=True).start()
        grid = GrpcGrid(server)
        grid.wait_for_nodes(2, timeout_s=30)
        start = time.monotonic()
        replies = grid.send_and_receive(_messages(grid))
        took = time.monotonic() - start
        assert took < 10, took  # the quorum (1 of 2) came at once, then 1 s of grace: not the 60 s deadline
        assert sorted(r.has_error() for r in replies) == [False, True]
    finally:
        stop.set()
        honest.set()
        silent.close()
        server.stop()


# -- starvation ---------------------------------------------------------------------------------
def _messages(grid):
    torch.manual_seed(0)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1))
    initial = ArrayRecord(DIGITS.build_model().state_dict())
    return list(strategy.configure_train(1, initial, ConfigRecord(TrainConfig(local_steps=5).to_config()), grid))


def _honest_devices(server, certs, devices) -> threading.Event:
    """Raw devices in threads: pull, answer at once (a metrics-only Update), repeat."""
    stop = threading.Event()

    def loop(device: str) -> None:
        conn = Connection(server.address, device, device_credentials(certs, device))
        node = _join(conn, device)
        while not stop.is_set():
            try:
                pulled = conn.pull(2.0, 1 << 24, 10)
                if pulled.header.status == fpb.PULL_STATUS_TASK:
                    update = task_pb2.Update(task_id=pulled.header.task_id, node_id=node, metrics={"num-examples": 1.0})
                    conn.push(pulled.header.task_id, update.SerializeToString(), 1 << 20, 10)
            except grpc.RpcError:
                time.sleep(0.1)
        conn.close()

    for device in devices:
        threading.Thread(target=loop, args=(device,), daemon=True).start()
    return stop


async def _attack(address: str, root: str, polls: int, pushes: int) -> None:
    """One device floods long polls, another holds stalled pushes; every slot reopens 0.2 s after it ends."""
    certs = CertDir(Path(root))

    def channel(device: str) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(certs.ca.read_bytes(), certs.device_key(device).read_bytes(), certs.device(device).read_bytes())
        return grpc.aio.secure_channel(address, creds)

    flood, stall = channel(FLOODER), channel(STALLER)
    for ch, device in ((flood, FLOODER), (stall, STALLER)):
        join = fpb.JoinRequest(device_id=device, codecs=["fp32"], protocol_version=1).SerializeToString()
        while True:  # the last attack's session holds the identity until it times out
            try:
                await ch.unary_unary(SERVICE + "Join")(join)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.3)
    pull, push = flood.unary_stream(SERVICE + "PullTask"), stall.stream_unary(SERVICE + "PushUpdate")

    async def nothing():
        await asyncio.Event().wait()
        yield b""

    async def poll_slot() -> None:
        while True:
            try:
                async for _ in pull(fpb.PullRequest(wait_s=60).SerializeToString()):
                    pass
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)

    async def push_slot() -> None:
        while True:
            try:
                await push(nothing())
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)

    print("ready", flush=True)
    await asyncio.gather(*[poll_slot() for _ in range(polls)], *[push_slot() for _ in range(pushes)])


def _rounds_per_minute(grid, seconds: float) -> float:
    """Rounds of the honest devices per minute over a window of ``seconds`` (at least 3 rounds).

    A window of fixed length, not of a fixed number of rounds: a faster round must not shrink
    the window to the flood's first, most intense half second (the attackers are joined too,
    but not sampled).
    """
    honest = {int(d) for d in HONEST}
    start = time.monotonic()
    rounds = 0
    while rounds < 3 or time.monotonic() - start < seconds:
        replies = grid.send_and_receive([m for m in _messages(grid) if m.metadata.dst_node_id in honest])
        assert not any(r.has_error() for r in replies)
        rounds += 1
    return rounds * 60 / (time.monotonic() - start)


def _device_process(server, certs, device: str, data: Path) -> subprocess.Popen:
    """A real fedge-client process: devices are other machines, not threads of the server's process."""
    return subprocess.Popen([
        str(Path(sys.executable).parent / "fedge-client"), "--server", server.address, "--task", "digits",
        "--data", str(data), "--ca", str(certs.ca), "--cert", str(certs.device(device)),
        "--key", str(certs.device_key(device)), "--pull-wait", "5",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_honest_rounds_keep_80_percent_of_their_rate_under_poll_and_push_floods(certs, tmp_path, capsys):
    server = start_server(certs, pull_wait_s=30.0)  # default limits: 2 polls per device, 30 s idle deadline
    train = DIGITS.load().train
    devices = []
    for i, device in enumerate(HONEST):
        shard = train.subset(np.arange(i, 600, 2))
        np.savez(tmp_path / f"{device}.npz", x=shard.x, y=shard.y)
        devices.append(_device_process(server, certs, device, tmp_path / f"{device}.npz"))
    rates: dict[str, list[float]] = {"calm": [], "attack": []}
    attacker = None
    try:
        grid = GrpcGrid(server)
        grid.wait_for_nodes(2, timeout_s=60)
        _rounds_per_minute(grid, 1.0)  # warm-up
        for _ in range(3):  # alternate: calm, attack
            rates["calm"].append(_rounds_per_minute(grid, 3.0))
            code = f"import asyncio, test_transport_hardening as t; asyncio.run(t._attack({server.address!r}, {str(certs.root)!r}, 70, 70))"
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
            attacker = subprocess.Popen([sys.executable, "-c", code], cwd=HERE, env=env, stdout=subprocess.PIPE, text=True)
            assert attacker.stdout.readline().strip() == "ready"
            time.sleep(1.0)  # let the flood build up
            rates["attack"].append(_rounds_per_minute(grid, 3.0))
            attacker.kill()
            attacker.wait()
            attacker = None
    finally:
        if attacker is not None:
            attacker.kill()
        for proc in devices:
            proc.kill()
            proc.wait()
        server.stop()
    ratio = statistics.median(rates["attack"]) / statistics.median(rates["calm"])
    with capsys.disabled():
        print(f"\nhonest rounds/min calm {[round(r) for r in rates['calm']]}, under attack {[round(r) for r in rates['attack']]}: ratio {ratio:.2f}")
    assert ratio >= 0.8
