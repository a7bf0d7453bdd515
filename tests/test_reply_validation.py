"""Issue 11: every field of a device's reply is validated before a Flower strategy sees it.

Each test runs a real federation (digits, in-process EdgeClients, CompressedStrategy
around a real Flower strategy, Flower's own ``Strategy.start`` loop) in which one device
lies in its Update, and compares the result with the same federation where that device
is silent (the honest-only model) or honest at the cap.
"""

import math

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg
from hostile_grid import (
    HostileGrid,
    drop_metric,
    fill_update,
    finite_model,
    same_model,
    set_metric,
    setup,
    silent,
    train_config,
)

from fedge.server.federation import run_federation
from fedge.simulations.clients import node_id_of
from fedge.strategies import CompressedStrategy
from fedge.strategies.reply_validation import ReplyPolicy, ReplyRejected, ReplyValidator, update_norm

ATTACKER = node_id_of(2)
ROUNDS = 2


def run(attack, clients=3, policy=None, inner=None):
    recipe, initial, evaluator, sizes = setup(clients)
    strategy = CompressedStrategy(
        inner or FedAvg(fraction_evaluate=0.0),
        validation=policy or ReplyPolicy(max_num_examples=max(sizes)),
    )
    grid = HostileGrid(recipe, {ATTACKER: attack} if attack is not None else {})
    result = run_federation(strategy, grid, initial, evaluator, ROUNDS, train_config())
    return result, strategy, sizes


def reasons(strategy, node=ATTACKER):
    return [d.reason for d in strategy.log.dropped if d.node_id == node]


def test_nan_num_examples_is_dropped_and_the_model_is_the_honest_only_one():
    result, strategy, _ = run(set_metric("num-examples", math.nan))
    honest, _, _ = run(silent)
    assert len(reasons(strategy)) == ROUNDS and all("not finite" in r for r in reasons(strategy))
    assert finite_model(result.final_arrays) and same_model(result.final_arrays, honest.final_arrays)
    assert [r.dropped for r in result.rounds[1:]] == [1] * ROUNDS and all(r.abandoned is None for r in result.rounds)


@pytest.mark.parametrize("value", [0.0, -1.0, 2.5, math.inf])
def test_zero_negative_fractional_and_infinite_num_examples_are_dropped(value):
    result, strategy, _ = run(set_metric("num-examples", value))
    honest, _, _ = run(silent)
    assert len(reasons(strategy)) == ROUNDS
    assert same_model(result.final_arrays, honest.final_arrays)


def test_inflated_num_examples_moves_the_model_no_further_than_an_honest_device_at_the_cap():
    result, strategy, sizes = run(set_metric("num-examples", 1e12))
    at_cap, _, _ = run(set_metric("num-examples", float(max(sizes))))
    assert not reasons(strategy)  # kept, weighted at the cap, and the cap recorded
    notes = [a.note for a in strategy.log.adjusted if a.node_id == ATTACKER]
    assert len(notes) == ROUNDS and all(f"capped to {max(sizes)}" in n for n in notes)
    assert same_model(result.final_arrays, at_cap.final_arrays)
    # control: without a cap the lie takes the model over (what issue 11 measured)
    uncapped, _, _ = run(set_metric("num-examples", 1e12), policy=ReplyPolicy())
    assert not same_model(uncapped.final_arrays, at_cap.final_arrays)


def test_weights_summing_to_zero_abandon_the_round_and_keep_the_model():
    """The validator weights by ``w`` (misconfigured), Flower by ``num-examples``: every
    device sends num-examples=0, Flower divides by zero; the guard abandons each round."""
    everyone_zero = {n: set_metric("num-examples", 0.0) for n in (node_id_of(0), node_id_of(1), ATTACKER)}
    recipe, initial, evaluator, sizes = setup(3)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0), validation=ReplyPolicy(weight_key="local_steps"))
    result = run_federation(strategy, HostileGrid(recipe, everyone_zero), initial, evaluator, ROUNDS, train_config())
    assert [a.server_round for a in strategy.log.abandoned] == [1, 2]
    assert all("ZeroDivisionError" in a.reason for a in strategy.log.abandoned)
    assert all("ZeroDivisionError" in (r.abandoned or "") for r in result.rounds[1:])
    assert same_model(result.final_arrays, initial)
    assert len({r.accuracy for r in result.rounds}) == 1


def test_a_non_finite_aggregate_is_abandoned_and_the_strategy_state_restored():
    """FedAdam with tau=0 divides 0/0 on coordinates no device changes (digits' blank
    pixels): a NaN aggregate from honest replies. The round is abandoned, FedAdam's
    moments are put back as they were (no NaN carried into the next round)."""
    recipe, initial, evaluator, _ = setup(3)
    inner = FedAdam(fraction_evaluate=0.0, tau=0.0, eta=0.1)
    strategy = CompressedStrategy(inner)
    result = run_federation(strategy, HostileGrid(recipe, {}), initial, evaluator, ROUNDS, train_config())
    assert [a.server_round for a in strategy.log.abandoned] == [1, 2]
    assert all("non-finite aggregate" in a.reason for a in strategy.log.abandoned)
    assert same_model(result.final_arrays, initial)
    assert not inner.m_t and not inner.v_t  # FedAdam's state as before round 1


def test_an_extra_or_a_missing_metric_key_does_not_crash_flower():
    """Devices of different fedge versions: one reports a metric the others do not, one
    lacks ``train_loss``. Flower would raise InconsistentMessageReplies; the round keeps
    every reply and aggregates the keys all of them sent."""
    lies = {node_id_of(0): set_metric("new.metric.v2", 1.0), ATTACKER: drop_metric("train_loss")}
    recipe, initial, evaluator, sizes = setup(3)
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0), validation=ReplyPolicy(max_num_examples=max(sizes)))
    result = run_federation(strategy, HostileGrid(recipe, lies), initial, evaluator, ROUNDS, train_config())
    clean, _, _ = run(None)
    assert not strategy.log.dropped and not strategy.log.abandoned
    assert same_model(result.final_arrays, clean.final_arrays)
    trimmed = {(a.server_round, a.node_id) for a in strategy.log.adjusted if "trimmed" in a.note}
    assert {(1, node_id_of(0)), (2, node_id_of(0))} <= trimmed
    metrics = result.flower_result.train_metrics_clientapp[ROUNDS]
    assert "train_loss" not in metrics and "new.metric.v2" not in metrics and "local_steps" in metrics


def test_a_missing_weighting_key_drops_the_reply():
    result, strategy, _ = run(drop_metric("num-examples"))
    honest, _, _ = run(silent)
    assert all("'num-examples' is missing" in r for r in reasons(strategy)) and len(reasons(strategy)) == ROUNDS
    assert same_model(result.final_arrays, honest.final_arrays)


@pytest.mark.parametrize("clients", [2, 3])
def test_huge_finite_values_are_dropped_by_the_norm_bound(clients):
    """1e30 everywhere passes the safe decoder (finite); the update-norm bound drops it:
    with 3 replies by the median rule, with 2 by the model-derived fixed bound."""
    attacker = node_id_of(clients - 1)
    recipe, initial, evaluator, sizes = setup(clients)

    def federation(attack):
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0), validation=ReplyPolicy(max_num_examples=max(sizes)))
        grid = HostileGrid(recipe, {attacker: attack})
        return run_federation(strategy, grid, initial, evaluator, 3, train_config()), strategy

    attacked, strategy = federation(fill_update(1e30))
    honest, _ = federation(silent)
    dropped = [d for d in strategy.log.dropped if d.node_id == attacker]
    assert len(dropped) == 3 and all("exceeds the round's bound" in d.reason for d in dropped)
    assert finite_model(attacked.final_arrays) and same_model(attacked.final_arrays, honest.final_arrays)
    assert attacked.final.accuracy > attacked.rounds[0].accuracy  # honest replies keep training it


def test_evaluation_replies_are_validated_too():
    """A NaN accuracy or a missing num-examples in a federated-evaluation reply is dropped;
    the federated accuracy stays the honest devices' average."""
    recipe, initial, evaluator, sizes = setup(3)

    def federation(attack):
        strategy = CompressedStrategy(FedAvg(fraction_evaluate=1.0), validation=ReplyPolicy(max_num_examples=max(sizes)))
        grid = HostileGrid(recipe, {ATTACKER: attack}, kind="evaluate")
        return run_federation(strategy, grid, initial, evaluator, 1, train_config()), strategy

    lying, strategy = federation(set_metric("accuracy", math.nan))
    assert reasons(strategy) == ["evaluation: ReplyRejected: metric 'accuracy' is nan, not finite"]
    silent_run, _ = federation(silent)
    assert lying.rounds[1].federated_accuracy == silent_run.rounds[1].federated_accuracy
    assert math.isfinite(lying.rounds[1].federated_accuracy)


def test_metric_values_and_keys_are_checked():
    validator = ReplyValidator(ReplyPolicy(max_num_examples=100))
    clean, notes = validator.check_metrics({"num-examples": 7.0, "train_loss": 0.5})
    assert clean == {"num-examples": 7.0, "train_loss": 0.5} and notes == []
    for bad, reason in [
        ({"num-examples": 7.0, "loss": math.nan}, "not finite"),
        ({"num-examples": 7.0, "loss": True}, "not a number"),
        ({"num-examples": 7.0, "loss": [1.0]}, "not a number"),
        ({"num-examples": 7.0, "": 1.0}, "printable name"),
        ({"num-examples": 7.0, "x" * 300: 1.0}, "printable name"),
        ({"num-examples": 7.0, **{f"m{i}": 0.0 for i in range(2000)}}, "at most"),
    ]:
        with pytest.raises(ReplyRejected, match=reason):
            validator.check_metrics(bad)


def test_the_norm_bound_is_the_smaller_of_fixed_and_median_rules():
    validator = ReplyValidator(ReplyPolicy(max_update_norm=50.0, max_update_norm_median=5.0))
    assert validator.norm_bound([1.0, 2.0, 3.0], model_norm=10.0) == 10.0  # 5 x median 2
    assert validator.norm_bound([1.0, 200.0], model_norm=10.0) == 50.0  # two replies: no median rule
    auto = ReplyValidator(ReplyPolicy(max_update_norm_median=0))
    assert auto.norm_bound([1.0, 2.0, 3.0], model_norm=0.5) == 100.0  # 100 x max(1, ||model||)
    assert ReplyValidator(ReplyPolicy(max_update_norm=math.inf, max_update_norm_median=0)).norm_bound([1e30], 1.0) == math.inf
    assert update_norm({"a": np.full(4, 1e30, np.float32)}) == pytest.approx(2e30)


def test_fedge_sim_and_fedge_server_build_the_same_validator():
    """One validator: ``build_strategy`` (used by fedge-sim for every backend and by
    fedge-server) takes its policy from ``server.*`` and the task-derived cap."""
    from hydra import compose, initialize_config_dir

    from fedge.conf.build import ConfigError, build_strategy
    from fedge.conf.schema import register_configs

    register_configs()
    conf = str((__import__("pathlib").Path(__file__).parents[1] / "conf").resolve())
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        strategy = build_strategy(compose("config"), max_num_examples=123)
        assert strategy.validator.policy == ReplyPolicy(max_num_examples=123, weight_key="num-examples")
        tuned = build_strategy(
            compose("config", overrides=["server.max_num_examples=9", "server.max_update_norm=2.5"]), max_num_examples=123
        )
        assert tuned.validator.policy.max_num_examples == 9 and tuned.validator.policy.max_update_norm == 2.5
        with pytest.raises(ConfigError, match="max_update_norm_median"):
            build_strategy(compose("config", overrides=["server.max_update_norm_median=0.5"]))


def test_simulation_results_record_dropped_replies_with_reasons(tmp_path):
    """fedge-sim end to end: a reply the validator refuses lands in results.json with its reason."""
    import json

    from hydra import compose, initialize_config_dir

    from fedge.simulations.experiment import run_experiment

    conf = str((__import__("pathlib").Path(__file__).parents[1] / "conf").resolve())
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=[
            "rounds=1", "num_clients=3", "backend.num_workers=0", "client.local_steps=1", "progress=false",
            "server.max_update_norm=1e-9",  # every honest update is "too large": all dropped
        ])
        outcome = run_experiment(cfg, tmp_path)
    saved = json.loads(outcome.results_path.read_text())
    assert len(saved["dropped_replies"]) == 3 and all("exceeds" in d["reason"] for d in saved["dropped_replies"])
    assert saved["rounds"][1]["dropped"] == 3
    assert saved["rounds"][1]["accuracy"] == saved["rounds"][0]["accuracy"]  # the model did not move


def test_a_lying_device_cannot_crash_fedge_server_processes(tmp_path):
    """Through real processes: fedge-server and two honest fedge-client processes over
    mTLS on loopback, and a device with a valid certificate that answers every training
    task with NaN num-examples, 1e12 num-examples with 1e30 tensors, or an extra metric key.
    The server finishes every round, its model stays finite and trains, and every refusal
    is in results.json with its reason (issue 11: these crashed or poisoned the server)."""
    import json
    import socket
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from grpc_helpers import wait_until

    from fedge.client.connection import Connection, DeviceCredentials
    from fedge.protos.codecs import decode_update, encode_update
    from fedge.protos.v1 import federation_pb2 as fpb
    from fedge.protos.v1 import task_pb2, tensor_pb2
    from fedge.server.certs import CertDir, create_federation, issue_devices
    from hostile_grid import DATA

    bin_dir = Path(sys.executable).parent
    certs = CertDir(tmp_path / "certs")
    create_federation(certs.root)
    issue_devices(certs.root, ["1000", "1001", "1002"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rounds = 3
    logs = {}

    def start(name, args):
        logs[name] = open(tmp_path / f"{name}.log", "wb")
        return subprocess.Popen(args, stdout=logs[name], stderr=subprocess.STDOUT)

    server = start("server", [
        str(bin_dir / "fedge-server"), f"server.address=127.0.0.1:{port}", f"server.certs={certs.root}",
        f"server.checkpoint_dir={tmp_path / 'ckpt'}", "server.heartbeat_s=1", "server.join_timeout_s=120",
        "server.round_timeout_s=60", "num_clients=3", f"rounds={rounds}", "progress=false", "client.local_steps=10",
        f"hydra.run.dir={tmp_path / 'run'}",
    ])
    clients = []
    for i, device in enumerate(["1000", "1001"]):
        data = tmp_path / f"{device}.npz"
        shard = DATA.train.subset(np.arange(i, 600, 2))
        np.savez(data, x=shard.x.reshape(len(shard), -1), y=shard.y)
        clients.append(start(device, [
            str(bin_dir / "fedge-client"), "--server", f"127.0.0.1:{port}", "--task", "digits", "--data", str(data),
            "--ca", str(certs.ca), "--cert", str(certs.device(device)), "--key", str(certs.device_key(device)),
            "--backoff-max", "1", "--pull-wait", "5",
        ]))
    lies = [
        {"num-examples": math.nan, "train_loss": 0.1},
        {"num-examples": 1e12, "train_loss": 0.1, "huge": 1.0},
        {"num-examples": 300.0, "train_loss": 0.1, "extra.key.v9": 1.0},
    ]
    pushed: list[str] = []

    def lying_device():
        conn = Connection(f"127.0.0.1:{port}", "1002",
                          DeviceCredentials.from_files(certs.ca, certs.device("1002"), certs.device_key("1002")))
        try:
            for _ in range(600):
                try:
                    conn.join("1002", {}, ["fp32"], timeout_s=5)
                    break
                except Exception:  # the server is still starting
                    threading.Event().wait(0.2)
            while True:
                pulled = conn.pull(wait_s=5, max_task_bytes=1 << 26, transfer_timeout_s=30)
                if pulled.header.status == fpb.PULL_STATUS_FINISHED:
                    return
                if pulled.payload is None:
                    continue
                task = task_pb2.Task.FromString(pulled.payload)
                model = decode_update(task.model)
                if task.kind != "train":
                    update = task_pb2.Update(task_id=task.task_id, node_id=task.node_id, metrics={"num-examples": 1.0})
                else:
                    lie = lies[(task.server_round - 1) % len(lies)]
                    scale = 1e30 if "huge" in lie else 1e-4
                    delta = {k: np.full_like(v, scale) for k, v in model.items()}
                    update = task_pb2.Update(
                        task_id=task.task_id, node_id=task.node_id, metrics={k: v for k, v in lie.items() if k != "huge"},
                        update=encode_update(delta, "fp32", tensor_pb2.UPDATE_KIND_DELTA, base_round=task.server_round - 1),
                    )
                reply, _ = conn.push(task.task_id, update.SerializeToString(), 1 << 20, timeout_s=30)
                pushed.append(f"{task.kind} {task.server_round}: {reply.accepted}")
        finally:
            conn.close()

    liar = threading.Thread(target=lying_device, daemon=True)
    liar.start()
    try:
        assert server.wait(timeout=300) == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert [c.wait(timeout=60) for c in clients] == [0, 0]
        liar.join(timeout=30)
    finally:
        for proc in [server, *clients]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs.values():
            f.close()
    assert pushed[:rounds] == [f"train {r}: True" for r in range(1, rounds + 1)]  # the transport took every lie
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [d["server_round"] for d in results["dropped_replies"]] == [1, 2]
    assert "not finite" in results["dropped_replies"][0]["reason"]
    assert "exceeds the round's bound" in results["dropped_replies"][1]["reason"]
    assert any(a["server_round"] == 3 and "trimmed" in a["note"] for a in results["adjusted_replies"])
    assert all(r["abandoned"] is None for r in results["rounds"])
    final = np.load(tmp_path / "run" / "final_model.npz")
    assert all(np.isfinite(final[k]).all() for k in final.files)
    accuracy = [r["accuracy"] for r in results["rounds"]]
    assert accuracy[-1] > accuracy[0] + 0.1, accuracy  # the honest devices kept training it
