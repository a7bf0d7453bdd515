"""SecAgg+ over the real wire (issue 14, must-show 3): fedge-client processes, mTLS, loopback.

Ten devices are real ``fedge-client`` processes (GrpcSimulation: the fedge-server logic in
this process, certificates made for the run). Every key, share, masked input and unmask
answer travels as a signed Task / Update over gRPC. 30% of the devices are killed with
SIGKILL after sending their masked input, or (separately) before; the round completes and
the server's unmasked integers equal, bit for bit, the plaintext sum of the same quantised
updates, which this test recomputes by replaying each device's training task on a replica
of that device (same data, seed, task bytes, one torch thread, as the process has).

Every wait is bounded (round deadline, process exit timeouts).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg

from fedge.client import TrainConfig
from fedge.client.data import load_local_data
from fedge.client.edge_client import EdgeClient
from fedge.client.secagg import SecAggDevice
from fedge.conf.schema import ServerConfig
from fedge.protos.secagg import REQUEST_KEY
from fedge.protos.secagg.params import RoundPlan, check_setup
from fedge.protos.v1 import secagg_pb2 as pb
from fedge.protos.v1 import task_pb2
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import run_federation
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.grpc_backend import GrpcSimulation
from fedge.strategies import CompressedStrategy
from fedge.strategies.secagg.strategy import SecAggSettings, SecAggStrategy
from fedge.tasks.digits import DigitsTask

N = 10
KILLED = 3  # 30%
BIN = Path(sys.executable).parent


def _stage(task: task_pb2.Task) -> str:
    """``train`` or the secure-aggregation stage a query Task asks for."""
    if task.kind == "train" or REQUEST_KEY not in task.config:
        return task.kind
    return pb.SecAggRequest.FromString(task.config[REQUEST_KEY].bytes_value).WhichOneof("stage") or ""


class _VectorRecorder(SecAggDevice):
    """A replica's secure-aggregation side: records the integer vector it would mask."""

    def __init__(self, node_id: int, plan: RoundPlan) -> None:
        super().__init__(node_id)
        self.plan = plan
        self.vector: np.ndarray | None = None

    def masked_input(self, request, delta, num_examples, rng):
        self.vector = self.encoder.encode(self.plan, delta, num_examples, rng)
        return pb.SecAggReply()


def _replayed_vector(task, data_path: Path, node_id: int, train_payload: bytes, plan: RoundPlan) -> np.ndarray:
    """The quantised vector device ``node_id`` masked, recomputed from its train Task."""
    data = load_local_data(data_path, task.input_shape, task.num_classes)
    client = EdgeClient(task, data, node_id, None, 0)
    recorder = _VectorRecorder(node_id, plan)
    client.secagg = recorder
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the process (fedge-client --threads 1): the same float sums
    try:
        update = client.handle(task_pb2.Task.FromString(train_payload))
    finally:
        torch.set_num_threads(threads)
    assert not update.error and recorder.vector is not None, update.error
    return recorder.vector


@pytest.mark.parametrize("when", ["after", "before"])
def test_thirty_percent_of_fedge_client_processes_killed_the_sum_of_the_survivors_is_exact(when, tmp_path):
    task = DigitsTask()
    data = task.load()
    parts = np.array_split(np.random.default_rng(0).permutation(len(data.train)), N)
    train = TrainConfig(local_steps=5)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, train, 0)
    # heartbeat 1 s: a killed device counts as gone 3 s later, so no stage waits for its deadline
    settings = ServerConfig(heartbeat_s=1.0, round_timeout_s=180.0, pull_wait_s=5.0)
    grid = GrpcSimulation(recipe, settings, "fedge.tasks.digits:DigitsTask", {}, ["fp32"], 1 << 30)
    assert grid.server.secure  # mTLS, signed tasks
    seen: dict[str, dict[int, bytes]] = {}  # stage -> node -> Task bytes
    killed: list[int] = []
    post = grid.server.board.post
    kill_at = "unmask" if when == "after" else "train"

    def post_and_kill(tasks):
        stages = {_stage(task_pb2.Task.FromString(t.payload)) for t in tasks}
        for t in tasks:
            seen.setdefault(_stage(task_pb2.Task.FromString(t.payload)), {})[t.node_id] = t.payload
        if kill_at in stages and not killed:
            # "after": these devices' masked inputs are in (only devices that sent one are asked to unmask)
            for node_id in sorted(t.node_id for t in tasks)[:KILLED]:
                grid.processes[node_id].send_signal(signal.SIGKILL)
                grid.processes[node_id].wait(timeout=30)
                killed.append(node_id)
        post(tasks)

    grid.server.board.post = post_and_kill
    strategy = SecAggStrategy(
        CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=N, min_train_nodes=N)),
        SecAggSettings(clip=0.2, max_examples=200),
    )
    torch.manual_seed(0)
    initial = ArrayRecord(task.build_model().state_dict())
    with grid:
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 1, ConfigRecord(train.to_config()))
        work_dir = grid.work_dir
        data_files = {node: work_dir / f"{node}.npz" for node in recipe.partitions}
        server_round = strategy.current_round
        assert server_round is not None
        record = strategy.rounds[0]
        assert len(killed) == KILLED
        assert record.abandoned is None, record.abandoned
        assert (record.neighbours, record.threshold) == (N - 1, N // 2)  # default k for 10: complete, t = 5
        outcome = record.outcome
        if when == "after":
            assert outcome.masked == N and outcome.dropped_after_masking == killed and outcome.revealed == N - KILLED
            in_sum = sorted(recipe.partitions)  # their inputs count; their masks were removed with shares
        else:
            assert outcome.masked == N - KILLED and outcome.dropped_before_masking == killed
            in_sum = [u for u in sorted(recipe.partitions) if u not in killed]
        assert server_round.survivors == in_sum
        plan = check_setup(pb.SecAggRequest.FromString(task_pb2.Task.FromString(seen["setup"][in_sum[0]]).config[REQUEST_KEY].bytes_value).setup)
        plain = np.sum(
            [_replayed_vector(task, data_files[u], u, seen["train"][u], plan).astype(np.int64) for u in in_sum], axis=0
        )
    assert server_round.total is not None
    np.testing.assert_array_equal(server_round.total.astype(np.int64), plain)
    assert plain[-1] > 0  # the weight coordinate: every survivor counted
    # the round moved the model
    final = result.final_arrays
    assert any(not np.array_equal(final[k].numpy(), initial[k].numpy()) for k in initial.keys())


def test_fedge_server_and_fedge_client_processes_run_secagg(tmp_path):
    """``fedge-server secagg=on`` with three ``fedge-client`` processes over mTLS: a round
    of SecAgg+ stages through the real CLI, recorded in results.json."""
    import socket

    certs = CertDir(tmp_path / "certs")
    devices = ["1000", "1001", "1002"]
    create_federation(certs.root)
    issue_devices(certs.root, devices)
    train = DigitsTask().load().train
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ["server", *devices]}
    procs = [subprocess.Popen([
        str(BIN / "fedge-server"), f"server.address=127.0.0.1:{port}", f"server.certs={certs.root}",
        f"server.checkpoint_dir={tmp_path}/ckpt", "server.heartbeat_s=1", "server.join_timeout_s=120",
        "server.round_timeout_s=120", "num_clients=3", "rounds=1", "progress=false", "client.local_epochs=1",
        "secagg=on", f"hydra.run.dir={tmp_path}/run",
    ], stdout=logs["server"], stderr=subprocess.STDOUT)]
    for i, device in enumerate(devices):
        shard = train.subset(np.arange(i, len(train), 3))
        np.savez(tmp_path / f"{device}.npz", x=shard.x, y=shard.y)
        procs.append(subprocess.Popen([
            str(BIN / "fedge-client"), "--server", f"127.0.0.1:{port}", "--task", "digits", "--data", str(tmp_path / f"{device}.npz"),
            "--ca", str(certs.ca), "--cert", str(certs.device(device)), "--key", str(certs.device_key(device)),
            "--backoff-max", "1", "--pull-wait", "5",
        ], stdout=logs[device], stderr=subprocess.STDOUT))
    try:
        assert procs[0].wait(timeout=300) == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert [p.wait(timeout=60) for p in procs[1:]] == [0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (record,) = results["secagg"]
    assert record["abandoned"] is None and record["outcome"]["revealed"] == 3 and record["threshold"] == 2
    assert results["rounds"][1]["accuracy"] > results["rounds"][0]["accuracy"]


def test_the_answer_ceiling_of_a_secagg_train_task_fits_any_masked_vector():
    """With q8 as the round's codec, a 1,000-device ring needs 18 bits a coordinate: the
    server must not refuse the push (masked vectors are sized as fp32, the most they take)."""
    from fedge.protos import config_values
    from fedge.protos.codecs import CodecSpec, encode_update
    from fedge.protos.codecs.plan import UplinkPlan
    from fedge.protos.secagg import ring
    from fedge.protos.v1 import tensor_pb2
    from fedge.server.push_limits import UpdateCeiling

    weights = {"w": np.zeros((300, 300), np.float32), "b": np.zeros(300, np.float32)}
    ceiling = UpdateCeiling(envelope_bytes=1024, hard_limit_bytes=1 << 30)

    def task(extra: dict) -> task_pb2.Task:
        t = task_pb2.Task(task_id="t", kind="train", server_round=1)
        t.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS))
        config_values.to_wire({**UplinkPlan(CodecSpec("uniform", {"bits": 8})).to_config(), **extra}, t.config)
        return t

    masked = pb.SecAggReply(masked=pb.MaskedInput(server_round=1,
                                                 data=b"\0" * ring.packed_size(90_301, 1000 * 255 + 1))).ByteSize()
    assert ceiling(task({})) < masked  # the q8 plan alone would refuse it
    assert ceiling(task({REQUEST_KEY: b"bundle-1"})) > masked
    assert ceiling(task({REQUEST_KEY: b"bundle-2"})) == ceiling(task({REQUEST_KEY: b"bundle-1"}))
