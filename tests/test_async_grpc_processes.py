"""fedge-server mode=async with three fedge-client processes over mTLS on 127.0.0.1 (issue 13, must-show 4).

The devices are one machine's processes made slower by ``fedge-client --slowdown``
(each task costs FACTOR times the CPU time it took: the same work, then a wait of
(FACTOR - 1) x its CPU seconds before the push), factors 1, 3 and 8. The server is killed with SIGKILL mid-run, while its
newest checkpoint holds a non-empty buffer, and restarted with ``--resume``.
Every loop here is bounded (subprocess timeouts, polling deadlines).
"""

from __future__ import annotations

import json
import signal
import socket
from collections import Counter
from pathlib import Path

from grpc_helpers import Processes, digits_shard_file, fedge_client_args, fedge_server_args, wait_until

from fedge.server.async_grpc_checkpoint import describe
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.server.checkpoint import CheckpointError, checkpoint_files, load_checkpoint
from fedge.tasks.digits import DigitsTask

SLOWDOWN = {"1000": 1.0, "1001": 3.0, "1002": 8.0}
STEPS, K = 24, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _saved(checkpoint_dir: Path) -> dict | None:
    """The newest valid checkpoint's summary (None while there is none)."""
    if not checkpoint_files(checkpoint_dir):
        return None
    try:
        return describe(load_checkpoint(checkpoint_dir))
    except (CheckpointError, FileNotFoundError):
        return None


def test_async_server_killed_mid_run_resumes_with_its_buffer_and_the_fastest_device_contributes_most(tmp_path):
    certs = CertDir(tmp_path / "certs")
    create_federation(certs.root)
    issue_devices(certs.root, list(SLOWDOWN))
    train = DigitsTask().load().train
    port = _free_port()
    checkpoint_dir = tmp_path / "checkpoint"
    server_args = fedge_server_args(
        port, certs, checkpoint_dir, f"rounds={STEPS}", "client.local_epochs=2",
        "mode=async", f"mode.buffer_size={K}", "mode.concurrency=3", "mode.max_staleness=50",
    )
    procs = Processes(tmp_path)
    try:
        first = procs.start("server1", [*server_args, f"hydra.run.dir={tmp_path}/run1"])
        clients = [
            procs.start(device, fedge_client_args(
                port, certs, device, digits_shard_file(tmp_path / f"{device}.npz", train, i, 3), "--slowdown", str(factor)
            ))
            for i, (device, factor) in enumerate(SLOWDOWN.items())
        ]
        # mid-run: a few model versions applied and an update waiting in the buffer
        wait_until(lambda: (s := _saved(checkpoint_dir)) is not None and s["version"] >= 4 and s["buffered"] >= 1,
                   240, "a checkpoint at version >= 4 with a buffered update")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        checkpoint = load_checkpoint(checkpoint_dir)  # exactly what the restart resumes from
        saved = describe(checkpoint)
        assert 4 <= saved["version"] < STEPS and saved["buffered"] >= 1, saved
        buffered = [(b["node_id"], b["staleness"]) for b in checkpoint.extra["aggregator"]["state"]["buffer"]]

        second = procs.start("server2", [*server_args, "--resume", f"hydra.run.dir={tmp_path}/run2"])
        assert second.wait(timeout=300) == 0, procs.log("server2")[-3000:]
        assert [c.wait(timeout=180) for c in clients] == [0, 0, 0]  # they reconnected, finished and left
    finally:
        procs.close()

    log2 = procs.log("server2")
    version = saved["version"]
    assert f"resuming async run at model version {version}: {saved['buffered']} buffered updates" in log2
    results = json.loads((tmp_path / "run2" / "results.json").read_text())
    section = results["async"]
    steps = section["steps"]
    # every step once, none lost or repeated over the restart; each applied step made one version
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    assert [r["round"] for r in results["rounds"]] == list(range(STEPS + 1))
    done = len(checkpoint.extra["steps"])  # steps applied before the kill
    assert results["rounds"][: done + 1] == checkpoint.records  # they come from the checkpoint, not repeated
    applied = [s for s in steps if s["abandoned"] is None]
    assert [s["version"] for s in applied] == [s["step"] for s in applied]
    # the buffer survived: the first step after the restart applied the updates it held, as they were
    after = steps[done]
    assert after["step"] == done + 1 and after["version"] == version + 1 and len(after["nodes"]) == K
    assert not Counter(buffered) - Counter(zip(after["nodes"], after["staleness"]))
    resumed = section["resumed"]
    assert (resumed["version"], resumed["buffered"], resumed["steps"]) == (version, saved["buffered"], done)
    # tasks in flight at the kill were offered again under their ids; an update computed
    # across the restart was pushed again and used, not lost
    assert len(resumed["reoffered_dispatches"]) == saved["in_flight"] and resumed["reoffered_accepted"]
    # the fastest device contributed the most updates (counted by the server over the whole run)
    by_node = section["updates_by_node"]
    accepted = {n: by_node.get(n, {}).get("accepted", 0) for n in SLOWDOWN}
    assert accepted["1000"] > max(accepted["1001"], accepted["1002"]), accepted
    # every buffered update was applied, or refused by the step's norm bound with a reason (the
    # adaptive bound compares a slow device's large, stale update with the fast devices'
    # late-training ones: on an idle machine a few are refused, see README)
    assert sum(by_node[n]["applied"] for n in by_node) == section["applied"]
    assert section["applied"] + section["refused"] == K * len(applied) and section["discarded_stale"] == 0
    dropped = results["dropped_replies"]
    assert len(dropped) == section["refused"] and all("exceeds the step's bound" in d["reason"] for d in dropped), dropped
    assert results["final"]["accuracy"] > 0.8
    client_log = procs.log("1000")
    assert "connection lost" in client_log and client_log.count("joined 127.0.0.1") >= 2
