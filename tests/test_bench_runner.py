"""bench.runner's parts: timing arithmetic, same training on both runtimes, fedge side.

The benchmark itself (with Ray) runs under ``make bench``; these tests check, without
Ray, that its figures are computed right and that Flower's ClientApp and fedge's
EdgeClient take exactly the same SGD steps, so only the runtime differs.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from bench.fedge_side import run_fedge
from bench.flower_side import PARTITION_ID_KEY, train_reply
from bench.runner import run_order, max_weight_difference
from bench.settings import BenchSettings, client_partitions, fedge_sim_client_defaults, initial_arrays
from bench.timing import Timeline
from fedge.client import EdgeClient, TrainConfig
from fedge.protos.codecs import decode_update
from fedge.protos.v1 import tensor_pb2
from fedge.server.identity import ensure_task_identity
from fedge.server.message_translation import message_to_task
from fedge.simulations.clients import node_id_of


def stamped(started: float, round_ends: list[float], finished: float) -> Timeline:
    timeline = Timeline(started=started)
    for r, _ in enumerate(round_ends):
        timeline.round_done(r, accuracy=0.1 * r)
    timeline.round_ends = list(round_ends)  # replace the real clock with known stamps
    timeline.finished = finished
    return timeline


def test_breakdown_separates_start_up_steady_rounds_and_teardown():
    # launch at 0, initial evaluation at 2, rounds end at 12 (slow first), 13, 14, 15; returned at 18
    figures = stamped(0.0, [2.0, 12.0, 13.0, 14.0, 15.0], 18.0).breakdown(clients_per_round=100)
    assert figures["round_s"] == pytest.approx([10.0, 1.0, 1.0, 1.0])
    assert figures["steady_round_s"] == pytest.approx(1.0)
    assert figures["start_up_s"] == pytest.approx(2.0 + 10.0 - 1.0)
    assert figures["teardown_s"] == pytest.approx(3.0)
    assert figures["total_s"] == pytest.approx(18.0)
    # total = start-up + N steady rounds + teardown
    assert figures["start_up_s"] + 4 * figures["steady_round_s"] + figures["teardown_s"] == pytest.approx(18.0)
    assert figures["client_rounds_per_s_steady"] == pytest.approx(100.0)
    assert figures["client_rounds_per_s_total"] == pytest.approx(400 / 18.0)
    assert figures["final_accuracy"] == pytest.approx(0.4)


def test_breakdown_refuses_runs_it_cannot_split():
    with pytest.raises(ValueError, match="at least 2 rounds"):
        stamped(0.0, [1.0, 2.0], 3.0).breakdown(10)
    unfinished = Timeline()
    unfinished.round_done(0, 0.0)
    with pytest.raises(ValueError, match="not finished"):
        unfinished.breakdown(10)
    with pytest.raises(ValueError, match="out of order"):
        unfinished.round_done(2, 0.0)


def test_settings_name_their_bad_values():
    with pytest.raises(ValueError, match="partition"):
        BenchSettings(partition="nope")
    with pytest.raises(ValueError, match="rounds"):
        BenchSettings(rounds=1)


def test_partition_covers_the_training_pool_once():
    settings = BenchSettings()
    labels = settings.task().load().train.y
    parts = client_partitions(settings, labels)
    assert len(parts) == 100
    everything = np.concatenate(parts)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    assert settings.train == fedge_sim_client_defaults()


def test_flower_client_app_takes_the_same_sgd_steps_as_edge_client():
    settings = BenchSettings(num_clients=10, seed=3, train=TrainConfig(local_steps=3, batch_size=16, momentum=0.5))
    partition, server_round = 4, 2
    ensure_task_identity()
    config = ConfigRecord({**settings.train.to_config(), "server-round": server_round})
    instruction = Message(
        RecordDict({"arrays": initial_arrays(settings), "config": config}),
        dst_node_id=node_id_of(partition),
        message_type="train",
    )
    context = Context(
        run_id=1,
        node_id=node_id_of(partition),
        node_config={PARTITION_ID_KEY: partition, "num-partitions": 10},
        state=RecordDict(),
        run_config={},
    )
    flower = train_reply(settings, instruction, context).content["arrays"]

    task = settings.task()
    data = task.load().train
    local = data.subset(client_partitions(settings, data.y)[partition])
    client = EdgeClient(task, local, node_id_of(partition), settings.train, settings.seed)
    update = client.handle(message_to_task(instruction))
    assert not update.error
    initial = {k: v.numpy() for k, v in initial_arrays(settings).items()}
    delta = decode_update(update.update, initial, expected_kind=tensor_pb2.UPDATE_KIND_DELTA)
    fedge = ArrayRecord({k: Array(initial[k] + delta[k]) for k in initial})

    assert max_weight_difference(flower, initial_arrays(settings)) > 1e-3  # it trained
    assert max_weight_difference(flower, fedge) < 1e-6  # and exactly as the EdgeClient did


def test_max_weight_difference_needs_the_same_tensors():
    a = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    b = ArrayRecord({"v": Array(np.zeros(3, dtype=np.float32))})
    with pytest.raises(ValueError, match="tensor names"):
        max_weight_difference(a, b)


def test_fedge_side_times_every_round_and_trains():
    settings = BenchSettings(num_clients=4, rounds=2, partition="iid", train=TrainConfig(local_steps=2))
    outcome = run_fedge(settings, num_workers=0)
    figures = outcome.timeline.breakdown(settings.num_clients)
    assert len(figures["round_s"]) == 2
    assert len(figures["accuracy_per_round"]) == 3
    assert figures["total_s"] >= sum(figures["round_s"])
    assert sorted(outcome.aggregate_s) == [1, 2]
    assert max_weight_difference(outcome.final_arrays, initial_arrays(settings)) > 1e-3


def test_runs_alternate_between_runtimes():
    assert run_order([2, 0], [1.0, 0.5, 0.25]) == [
        ("fedge", 2.0),
        ("flower", 1.0),
        ("fedge", 0.0),
        ("flower", 0.5),
        ("flower", 0.25),
    ]


def test_timeline_reports_cpu_per_client_round_of_the_steady_rounds():
    clock = iter([1.0, 5.0, 6.0, 8.0])  # CPU seconds at the end of rounds 0..3
    timeline = Timeline(cpu_clock=lambda: next(clock))
    for r in range(4):
        timeline.round_done(r, accuracy=0.5)
    timeline.finish()
    figures = timeline.breakdown(clients_per_round=10)
    # rounds 2..3 took 3 CPU seconds for 20 client-rounds; round 1 (start-up) is left out
    assert figures["cpu_ms_per_client_round_steady"] == pytest.approx(150.0)


def test_tree_cpu_counts_a_child_process_burning_cpu():
    import subprocess
    import sys

    from bench.cpu_time import tree_cpu_s

    before = tree_cpu_s()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<0.5: pass\ninput()"],
                             stdin=subprocess.PIPE)
    try:
        deadline = __import__("time").monotonic() + 60
        while tree_cpu_s() - before < 0.4 and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.1)
        assert tree_cpu_s() - before >= 0.4  # the child's CPU seconds count while it is alive
    finally:
        child.communicate(b"\n")


def test_training_floor_times_the_training_alone():
    from bench.training_floor import training_cpu_ms

    settings = BenchSettings(num_clients=4, rounds=2, partition="iid", train=TrainConfig(local_steps=1))
    floor = training_cpu_ms(settings, repeats=2)
    assert 0 < floor["cpu_ms_per_client_round"] <= floor["cpu_ms_per_client_round_median"]
    assert floor["wall_ms_per_client_round"] > 0


def test_isolated_run_reports_figures_and_the_same_model_as_in_process():
    from bench.runner import run_isolated

    settings = BenchSettings(num_clients=4, rounds=2, partition="iid", train=TrainConfig(local_steps=1))
    figures, final = run_isolated("fedge", settings, 0.0, 1, floor_ms=0.0)
    assert figures["cpu_ms_per_client_round_steady"] is not None and figures["cpu_ms_per_client_round_steady"] >= 0
    assert len(figures["round_s"]) == 2
    in_process = run_fedge(settings, num_workers=0).final_arrays
    assert max_weight_difference(final, in_process) == 0.0  # a fresh interpreter trains the same model
