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

import numpy as np
from grpc_helpers import serve_digits_federation

DEVICES = ["1000", "1001"]
ROUNDS = 3


def test_fedge_server_scores_every_real_device_against_its_reference_and_records_why(tmp_path):
    serve_digits_federation(tmp_path, DEVICES, f"rounds={ROUNDS}", "client.local_steps=10", "strategy=fltrust_screen",
                            "strategy.root_examples=100", "compression=topk")
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
