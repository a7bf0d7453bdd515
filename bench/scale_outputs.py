"""Scale-aware outputs at 10,000 clients (``python -m bench.scale_outputs``, part of ``make bench``).

1. The report (``fedge-report``'s :func:`~fedge.simulations.report.make_report`) of a
   10,000-client run: a synthetic ``results.json`` (no training; the shape fedge-sim
   writes: 10 rounds, every client listed with its bytes, replies and training seconds,
   and device-profile columns in the ``profiled`` case). Distributions and top-N
   instead of a bar per client (issue 16's "before": 181 s with a bar per client).
2. Partitioning 60,000 examples over 10,000 clients: ``IidPartitioner``'s numpy path
   against the per-partition read through flwr-datasets it replaced, and the
   per-partition read of a ``DirichletPartitioner`` (1,000 clients) through Arrow
   against Python lists. Sides alternate.

Writes ``bench/results/scale_outputs.{json,md}``: min and median seconds, load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import results_files


def synthetic_results(num_clients: int, rounds: int = 10, profiled: bool = False, seed: int = 0) -> dict[str, Any]:
    """A ``results.json`` payload of a ``num_clients`` run, numbers drawn at random: every
    client listed (all sampled), round records whose byte counts add up to the clients'."""
    rng = np.random.default_rng(seed)
    nodes = rng.choice(1 << 62, size=num_clients, replace=False)
    up = rng.lognormal(10, 1, num_clients).astype(int) * rounds
    down = np.full(num_clients, 90_000 * rounds)
    clients: dict[str, dict[str, Any]] = {}
    for i, node in enumerate(nodes.tolist()):
        failures = int(rng.random() < 0.02)
        client: dict[str, Any] = {"uplink_bytes": int(up[i]), "downlink_bytes": int(down[i]), "tasks": rounds,
                  "replies": rounds - failures, "failures": failures, "compute_s": float(rng.gamma(2.0, 0.05) * rounds)}
        if profiled:
            client.update(profile=["phone", "wearable", "gateway"][i % 3], sim_busy_s=float(rng.gamma(2.0, 3.0)),
                          energy_j=float(rng.gamma(2.0, 10.0)), stragglers=int(rng.random() < 0.05), unavailable=0)
        clients[str(node)] = client
    records = [{"round": 0, "accuracy": 0.1, "loss": 2.3, "uplink_bytes": 0, "downlink_bytes": 0, "wall_s": 0.0,
                "replies": 0, "failures": 0}]
    for r in range(1, rounds + 1):
        records.append({
            "round": r, "accuracy": 0.1 + 0.8 * r / rounds, "loss": 2.3 / r, "uplink_bytes": int(up.sum()) // rounds,
            "downlink_bytes": int(down.sum()) // rounds, "wall_s": 1.0, "replies": num_clients, "failures": 0,
            **({"sim_round_s": 5.0, "energy_j": 100.0, "stragglers": 3, "unavailable": 0} if profiled else {}),
        })
    config = {"task": {"_target_": "fedge.tasks.digits.DigitsTask"}, "strategy": {"_target_": "flwr.serverapp.strategy.FedAvg"},
              "compression": {"name": "topk"}, "num_clients": num_clients, "rounds": rounds,
              "device": {"name": "mix" if profiled else "none"}}
    return {"config": config, "final": records[-1], "rounds": records, "clients": clients}


def write_run(directory: Path, num_clients: int, profiled: bool = False) -> Path:
    """A run directory holding a synthetic ``results.json`` of ``num_clients`` clients."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(synthetic_results(num_clients, profiled=profiled)))
    return directory


def _times(fn: Callable[[], object], repeats: int) -> list[tuple[float, float]]:
    """``repeats`` runs of ``fn``: (wall-clock seconds, the process's CPU seconds) each."""
    out = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def _stats(times: list[tuple[float, float]]) -> dict[str, Any]:
    wall, cpu = [w for w, _ in times], [c for _, c in times]
    return {"s_min": min(wall), "s_median": statistics.median(wall), "cpu_s_min": min(cpu),
            "cpu_s_median": statistics.median(cpu), "runs": len(times)}


def report_times(num_clients: int, repeats: int) -> dict[str, Any]:
    from fedge.simulations.report import make_report

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profiled in (False, True):
            run = write_run(Path(tmp) / f"run_{profiled}", num_clients, profiled)
            key = "with device profiles" if profiled else "plain"
            out[key] = _stats(_times(lambda: make_report([run], Path(tmp) / f"out_{profiled}"), repeats))
    return out


def partition_times(repeats: int) -> dict[str, Any]:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

    from fedge.simulations.partition import partition_indices

    labels = np.arange(60_000) % 10

    def old_read(partitioner: Partitioner) -> list[np.ndarray]:  # as partition_indices read them before
        partitioner.dataset = Dataset.from_dict({"label": labels, "idx": np.arange(labels.size)})
        return [np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(partitioner.num_partitions)]

    def dirichlet() -> DirichletPartitioner:
        return DirichletPartitioner(1_000, "label", alpha=0.5, min_partition_size=10, seed=0)

    sides: dict[str, tuple[Callable[[], object], Callable[[], object], int]] = {
        "IID, 10,000 clients (numpy path vs flwr-datasets shards)": (
            lambda: partition_indices(labels, IidPartitioner(10_000)), lambda: old_read(IidPartitioner(10_000)), 1),
        "Dirichlet 0.5, 1,000 clients (read through Arrow vs Python lists)": (
            lambda: partition_indices(labels, dirichlet()), lambda: old_read(dirichlet()), repeats),
    }
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, (new, old, old_repeats) in sides.items():
            new_t: list[tuple[float, float]] = []
            old_t: list[tuple[float, float]] = []
            for i in range(repeats):  # alternate; the slow old IID side runs `old_repeats` times
                new_t += _times(new, 1)
                if i < old_repeats:
                    old_t += _times(old, 1)
            new_s, old_s = _stats(new_t), _stats(old_t)
            out[label] = {"new": new_s, "old": old_s, "speedup_min": old_s["s_min"] / new_s["s_min"]}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Scale-aware outputs at 10,000 clients",
        "",
        f"Command: `{result['command']}`.",
        "",
        *results_files.load_note(result["machine"]),
        f"## Report of a {result['clients']:,}-client run (synthetic results.json, 10 rounds, every client listed)",
        "",
        f"Above {result['max_client_bars']} clients the report shows distributions and the top "
        f"{result['top_n']} clients, and writes every client's row to clients.csv. Issue 16 measured 181 s "
        "for the same size with one bar per client.",
        "",
        "Wall-clock seconds, and the process's CPU seconds (on a shared machine the wall clock also "
        "counts the time other jobs held the core).",
        "",
        "| results | wall min / median s | CPU min / median s | runs |",
        "|---|---:|---:|---:|",
    ]
    for label, row in result["report"].items():
        lines.append(
            f"| {label} | {row['s_min']:.2f} / {row['s_median']:.2f} | {row['cpu_s_min']:.2f} / {row['cpu_s_median']:.2f} "
            f"| {row['runs']} |"
        )
    lines += ["", "## Partitioning 60,000 examples", "",
              "| partition | new min / median s | before min / median s | speed-up (min) |", "|---|---:|---:|---:|"]
    for label, row in result["partition"].items():
        lines.append(
            f"| {label} | {row['new']['s_min']:.3f} / {row['new']['s_median']:.3f} | "
            f"{row['old']['s_min']:.2f} / {row['old']['s_median']:.2f} ({row['old']['runs']} run(s)) | {row['speedup_min']:.0f}x |"
        )
    lines += ["", "Both sides give the same partitions (`tests/test_partition.py`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from fedge.simulations.report_clients import MAX_CLIENT_BARS, TOP_N

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    result: dict[str, Any] = {
        "clients": args.clients, "max_client_bars": MAX_CLIENT_BARS, "top_n": TOP_N,
        "report": report_times(args.clients, args.repeats),
        "partition": partition_times(args.repeats),
        "command": "python -m bench.scale_outputs " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    result["machine"] = results_files.machine(load_start, numpy=np.__version__)
    results_files.write("scale_outputs", result, markdown(result))


if __name__ == "__main__":
    main()
