"""Robust rules through ``fedge-server`` with real ``fedge-client`` processes (issue 12).

A defence that scores devices must work where devices are real, not only in ``fedge-sim``:
``strategy=fltrust_screen`` makes ``fedge-server`` train its own reference update on a
seeded root sample of the task's training pool, score every device's decoded top-k
update against it over mTLS on loopback, and record each decision (kept or excluded, the
trust score and why) per round in ``results.json``'s ``robust`` section, as ``fedge-sim``
does.
"""

from __future__ import annotations

import json
import socket

import numpy as np
from grpc_helpers import Processes, digits_shard_file, fedge_client_args, fedge_server_args

from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.tasks.digits import DigitsTask

DEVICES = ["1000", "1001"]
ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fedge_server_scores_every_real_device_against_its_reference_and_records_why(tmp_path):
    certs = CertDir(tmp_path / "certs")
    create_federation(certs.root)
    issue_devices(certs.root, DEVICES)
    train = DigitsTask().load().train
    port = _free_port()
    procs = Processes(tmp_path)
    args = fedge_server_args(
        port, certs, tmp_path / "ckpt", f"rounds={ROUNDS}", "client.local_steps=10", "strategy=fltrust_screen",
        "strategy.root_examples=100", "compression=topk", f"hydra.run.dir={tmp_path}/run",
    )
    server = procs.start("server", [f"num_clients={len(DEVICES)}" if a == "num_clients=3" else a for a in args])
    clients = [
        procs.start(d, fedge_client_args(port, certs, d, digits_shard_file(tmp_path / f"{d}.npz", train, i, len(DEVICES))))
        for i, d in enumerate(DEVICES)
    ]
    try:
        assert server.wait(timeout=300) == 0, procs.log("server")[-3000:]
        assert [c.wait(timeout=60) for c in clients] == [0, 0]
    finally:
        procs.close()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    decisions = [d for d in results["robust"] if d["node_id"] >= 0]
    # one decision per device and round, each with its trust score and reason
    assert sorted((d["server_round"], d["node_id"]) for d in decisions) == sorted(
        (r, int(n)) for r in range(1, ROUNDS + 1) for n in DEVICES
    )
    assert all(d["action"] in {"kept", "excluded"} and d["reason"] for d in decisions)
    assert all(np.isfinite(d["score"]) and 0.0 <= d["score"] <= 1.0 for d in decisions)
    # honest devices on IID shards agree with the reference: trusted, and the model learns
    assert sum(d["action"] == "kept" for d in decisions) >= len(decisions) // 2
    assert results["dropped_replies"] == []
    assert results["final"]["accuracy"] > results["rounds"][0]["accuracy"]
