"""``python -m bench.runner`` (``make bench``): fedge's local backend against Flower's
simulation runtime, side by side in one run, in client-rounds per second.

Both runtimes run the same federation (:class:`bench.settings.BenchSettings`): the
digits CNN, the same flwr-datasets partition of the same training pool over 100
clients, the same local mini-batch SGD (fedge's own ``train`` on both sides, seeded
identically), Flower's FedAvg over every client each round, central evaluation after
each round, the same number of rounds. Only the runtime differs:

* fedge: ``LocalGrid`` worker processes (``--fedge-workers``, each tried; 0 = in the
  calling process), FedAvg inside ``CompressedStrategy`` (fp32), ``run_federation``;
* Flower 1.41: ``ClientApp``/``ServerApp`` under ``flwr.simulation.run_simulation`` on
  Ray, each actor given ``--flower-cpus-per-client`` CPUs (each tried).

Reported per runtime: total wall clock (launch to return, start-up and teardown
included) and steady state (rounds 2..N), each as client-rounds/s, plus the start-up,
per-round and teardown seconds, FedAvg's aggregation seconds and accuracy. The >= 10x
target of issue 2 is judged on the steady-state ratio of the best setting of each side
(it does not depend on how many rounds amortise the start-up); the end-to-end ratio is
reported beside it. Writes ``bench/results/runner.json``.

Because wall clock on a shared machine measures the machine's other load as much as
the runtime (a runtime with more processes gets a larger share of a busy CPU), each run
also reports the CPU milliseconds per client-round of its whole process tree
(:mod:`bench.cpu_time`, rounds 2..N), and the training alone is timed as the floor
both runtimes share (:mod:`bench.training_floor`: the same ``train`` call, clients and
seeds). ``runtime_overhead_ratio`` = Flower's CPU per client-round minus the floor over
fedge's: what each runtime adds to the same training. Every run starts in a freshly
spawned interpreter (the bench's modules imported, nothing warmed up by an earlier run). ``--repeat N`` runs the
alternating sequence N times and reports each ratio's minimum and median over repeats.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from rich.console import Console
from rich.table import Table

from bench.fedge_side import run_fedge
from bench.flower_side import run_flower
from bench.instrumented import RunOutcome
from bench.training_floor import training_cpu_ms
from bench.settings import (
    DIRICHLET_MIN_PARTITION_SIZE,
    PARTITIONS,
    TASKS,
    BenchSettings,
    fedavg_options,
    fedge_sim_client_defaults,
    machine_info,
    make_partitioner,
)

RESULTS = Path(__file__).resolve().parent / "results" / "runner.json"
TARGET_RATIO = 10.0


def max_weight_difference(a: ArrayRecord, b: ArrayRecord) -> float:
    """Largest absolute difference between two models' weights (same names, shapes)."""
    if set(a) != set(b):
        raise ValueError(f"models differ in tensor names: {sorted(set(a) ^ set(b))}")
    return max(float(np.max(np.abs(a[k].numpy() - b[k].numpy()))) for k in a)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=defaults.num_clients)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--partition", choices=PARTITIONS, default=defaults.partition)
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="Dirichlet alpha")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--local-epochs", type=int, default=defaults.train.local_epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.train.batch_size)
    parser.add_argument("--local-steps", type=int, default=defaults.train.local_steps,
                        help="optimiser steps per client-round (0: --local-epochs); 1 measures the runtime's overhead")
    parser.add_argument("--clients-per-round", type=int, default=0, help="clients sampled per round (0: all)")
    parser.add_argument("--task", choices=TASKS, default=defaults.task_name,
                        help="digits (CNN) or image-lr (FLUTE's protocol: logistic regression on the MNIST sample)")
    parser.add_argument("--fedge-workers", type=int, nargs="+", default=[2, 0], help="LocalGrid num_workers to try")
    parser.add_argument(
        "--flower-cpus-per-client", type=float, nargs="+", default=[1.0, 0.5], help="Ray num_cpus per actor, each tried"
    )
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)), help="CPUs Ray may use")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[], help="a note to store in the results")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the alternating sequence this many times (min and median over repeats are reported)")
    return parser.parse_args(argv)


def _figures(outcome: RunOutcome, settings: BenchSettings, floor_ms: float) -> dict[str, object]:
    figures = outcome.timeline.breakdown(settings.sampled)
    steady_aggregate = [outcome.aggregate_s[r] for r in range(2, settings.rounds + 1)]
    figures["fedavg_aggregate_s_steady"] = statistics.fmean(steady_aggregate)
    figures["ms_per_client_round_steady"] = 1000 * cast(float, figures["steady_round_s"]) / settings.sampled
    figures["client_torch_threads"] = outcome.client_torch_threads
    cpu = figures["cpu_ms_per_client_round_steady"]
    figures["runtime_overhead_cpu_ms_per_client_round"] = cpu - floor_ms if isinstance(cpu, float) else None
    return figures


def _notes(runs: dict[str, dict], best_fedge: str, best_flower: str, machine: dict, after_load: float) -> list[str]:
    """Facts a reader needs next to the figures, derived from this run's measurements."""
    fedge, flower = runs[best_fedge], runs[best_flower]
    cores = machine["usable_cores"]
    notes = [
        "Clients train with 1 torch thread on every side (LocalGrid threads_per_worker=1; "
        "Ray's actors get OMP_NUM_THREADS from num_cpus; this process is set to 1 for num_workers=0 "
        "and for both servers).",
        "Round r's seconds run from the end of round r-1's central evaluation to the end of round r's; "
        "start_up_s = launch until the initial evaluation + round 1's excess over a steady round; "
        "teardown_s = last evaluation until the runtime returned (workers joined / Ray shut down).",
        f"Steady state per client-round: fedge {fedge['ms_per_client_round_steady']:.1f} ms, Flower "
        f"{flower['ms_per_client_round_steady']:.1f} ms. Both include the same local training, the same "
        f"FedAvg weighted mean (bit for bit) and the same central evaluation. Aggregation per round: fedge "
        f"{fedge['fedavg_aggregate_s_steady']:.2f} s (CompressedStrategy.aggregate_train: decoding and validating "
        f"every reply, then FedAvg's mean folded reply by reply), Flower {flower['fedavg_aggregate_s_steady']:.2f} s "
        "(FedAvg.aggregate_train over ArrayRecords).",
        "fedge's side runs with Flower's logger at ERROR, as fedge-sim does by default (verbose=false); Flower's "
        "simulation prints its strategy's INFO lines per round, as it does by default.",
    ]
    loads = [machine["load_average_1m"], after_load] + [
        run[key] for run in runs.values() for key in ("load_average_1m_before", "load_average_1m_after")
    ]
    if max(loads) > cores:
        notes.append(
            f"The machine was shared while this ran (1-minute load average between {min(loads):.1f} and "
            f"{max(loads):.1f} on {cores} cores; each run's is in its entry): absolute seconds are inflated and "
            "noisy. fedge and Flower runs alternate so a change of load does not fall on one runtime alone; "
            "compare ratios (steady_state_ratio_fastest_rounds is the least load-sensitive), and rerun on an "
            "idle machine for absolute figures."
        )
    return notes


def _table(runs: dict[str, dict], num_rounds: int) -> Table:
    table = Table(
        title=f"{num_rounds} rounds; c-r/s = client-rounds/s; steady = rounds 2..{num_rounds}",
        caption="w = LocalGrid num_workers; cpu = Ray num_cpus per ClientApp actor",
    )
    for column in ("runtime", "start-up s", "steady s/round", "steady c-r/s", "CPU ms/c-r", "teardown s", "total s",
                   "total c-r/s", "acc"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for name, run in runs.items():
        table.add_row(
            name,
            f"{run['start_up_s']:.1f}",
            f"{run['steady_round_s']:.2f}",
            f"{run['client_rounds_per_s_steady']:.0f}",
            f"{run['cpu_ms_per_client_round_steady']:.2f}",
            f"{run['teardown_s']:.1f}",
            f"{run['total_s']:.1f}",
            f"{run['client_rounds_per_s_total']:.1f}",
            f"{run['final_accuracy']:.3f}",
        )
    return table


def _run_one(conn: Connection, runtime: str, settings: BenchSettings, option: float, cpus: int, floor_ms: float) -> None:
    """One run in a fresh process: its figures and final weights back through ``conn``."""
    torch.set_num_threads(1)
    outcome = run_fedge(settings, int(option)) if runtime == "fedge" else run_flower(settings, option, cpus)
    conn.send((_figures(outcome, settings, floor_ms), {k: v.numpy() for k, v in outcome.final_arrays.items()}))
    conn.close()


def run_isolated(
    runtime: str, settings: BenchSettings, option: float, cpus: int, floor_ms: float
) -> tuple[dict[str, object], ArrayRecord]:
    """Run one runtime in a freshly spawned interpreter (its figures, its final model).

    Each run starts from the same state: the bench's modules imported, nothing else (no
    ``torch._dynamo`` that an earlier run or the floor's optimiser imported, no fork server
    or Ray left from an earlier run), and its CPU clock covers that process's tree only."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_run_one, args=(child, runtime, settings, option, cpus, floor_ms))
    proc.start()
    child.close()
    try:
        figures, arrays = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"the {runtime} run ({option:g}) died (exit code {proc.exitcode}); see its log above") from None
    proc.join()
    return figures, ArrayRecord({k: Array(v) for k, v in arrays.items()})


def run_order(fedge_workers: list[int], flower_cpus: list[float]) -> list[tuple[str, float]]:
    """fedge and Flower settings alternated, so a change in the machine's load during
    the benchmark does not fall on one runtime alone."""
    fedge = [("fedge", float(w)) for w in fedge_workers]
    flower = [("flower", c) for c in flower_cpus]
    order: list[tuple[str, float]] = []
    for i in range(max(len(fedge), len(flower))):
        order.extend(pair[i] for pair in (fedge, flower) if i < len(pair))
    return order


def _per_repeat_ratios(runs: dict[str, dict], repeats: int) -> dict[str, dict[str, object]]:
    """Per ratio, its minimum and median over the repeats (each repeat: the best setting of
    each side within it) and each repeat's value."""
    ratios: dict[str, list[float]] = {"steady_state_ratio": [], "runtime_overhead_ratio": [], "cpu_per_client_round_ratio": []}
    for repeat in range(1, repeats + 1):
        mine = {k: v for k, v in runs.items() if v["repeat"] == repeat}
        fedge = [v for v in mine.values() if v["runtime"] == "fedge"]
        flower = [v for v in mine.values() if v["runtime"] == "flower"]
        ratios["steady_state_ratio"].append(
            max(v["client_rounds_per_s_steady"] for v in fedge) / max(v["client_rounds_per_s_steady"] for v in flower)
        )
        oh = "runtime_overhead_cpu_ms_per_client_round"
        ratios["runtime_overhead_ratio"].append(min(v[oh] for v in flower) / max(min(v[oh] for v in fedge), 1e-9))
        cpu = "cpu_ms_per_client_round_steady"
        ratios["cpu_per_client_round_ratio"].append(min(v[cpu] for v in flower) / min(v[cpu] for v in fedge))
    return {k: {"min": min(v), "median": statistics.median(v), "each": v} for k, v in ratios.items()}


def _best(runs: dict[str, dict], runtime: str, key: str) -> str:
    return max((k for k, v in runs.items() if v["runtime"] == runtime), key=lambda k: runs[k][key])


def main(argv: list[str] | None = None) -> dict:
    """Run both runtimes, write the JSON, print the table; returns the JSON payload."""
    args = _parse(argv)
    started = time.perf_counter()
    try:
        settings = BenchSettings(
            num_clients=args.clients,
            rounds=args.rounds,
            partition=args.partition,
            alpha=args.alpha,
            seed=args.seed,
            train=replace(fedge_sim_client_defaults(), local_epochs=args.local_epochs, batch_size=args.batch_size,
                          local_steps=args.local_steps),
            clients_per_round=args.clients_per_round,
            task_name=args.task,
        )
    except ValueError as exc:
        print(f"bench.runner: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if min(args.flower_cpus_per_client) <= 0 or min(args.fedge_workers) < 0:
        print("bench.runner: --flower-cpus-per-client must be > 0 and --fedge-workers >= 0", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    console = Console()
    machine = machine_info()
    floors = [training_cpu_ms(settings)]  # again after the runs: the floor is the smaller
    runs: dict[str, dict] = {}
    finals: dict[str, ArrayRecord] = {}
    for repeat in range(1, args.repeat + 1):
        for runtime, option in run_order(args.fedge_workers, args.flower_cpus_per_client):
            name = f"fedge local w={option:g}" if runtime == "fedge" else f"Flower Ray {option:g}cpu"
            name += f" #{repeat}" if args.repeat > 1 else ""
            console.print(f"[bold]running {name}[/bold]")
            load_before = os.getloadavg()[0]
            if runtime == "fedge":
                setup: dict[str, object] = {"num_workers": int(option)}
            else:
                setup = {"cpus_per_client": option, "ray_num_cpus": args.cpus, "concurrent_actors": int(args.cpus // option)}
            figures, finals[name] = run_isolated(runtime, settings, option, args.cpus, floors[0]["cpu_ms_per_client_round"])
            runs[name] = {
                "runtime": runtime,
                "repeat": repeat,
                **setup,
                "load_average_1m_before": load_before,
                "load_average_1m_after": os.getloadavg()[0],
                **figures,
            }
    floors.append(training_cpu_ms(settings))
    floor_ms = min(f["cpu_ms_per_client_round"] for f in floors)
    for run in runs.values():  # the overhead over the smaller floor of the two
        run["runtime_overhead_cpu_ms_per_client_round"] = run["cpu_ms_per_client_round_steady"] - floor_ms
    after_load = os.getloadavg()[0]

    steady, total = "client_rounds_per_s_steady", "client_rounds_per_s_total"
    fedge_steady, flower_steady = _best(runs, "fedge", steady), _best(runs, "flower", steady)
    fedge_total, flower_total = _best(runs, "fedge", total), _best(runs, "flower", total)
    ratio_steady = runs[fedge_steady][steady] / runs[flower_steady][steady]
    ratio_total = runs[fedge_total][total] / runs[flower_total][total]
    overhead, cpu_key = "runtime_overhead_cpu_ms_per_client_round", "cpu_ms_per_client_round_steady"
    fedge_overhead = min((k for k, v in runs.items() if v["runtime"] == "fedge"), key=lambda k: runs[k][overhead])
    flower_overhead = min((k for k, v in runs.items() if v["runtime"] == "flower"), key=lambda k: runs[k][overhead])
    ratio_overhead = runs[flower_overhead][overhead] / max(runs[fedge_overhead][overhead], 1e-9)
    ratio_cpu = runs[flower_overhead][cpu_key] / runs[fedge_overhead][cpu_key]
    fastest = "steady_round_s_min"
    ratio_fastest = min(r[fastest] for r in runs.values() if r["runtime"] == "flower") / min(
        r[fastest] for r in runs.values() if r["runtime"] == "fedge"
    )
    per_repeat = _per_repeat_ratios(runs, args.repeat)
    payload = {
        "benchmark": "client-rounds per second: fedge local backend vs Flower simulation runtime (Ray)",
        "command": " ".join(["python -m bench.runner", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k != "train"},
            "train": asdict(settings.train),
            "task": f"{type(settings.task()).__module__}.{type(settings.task()).__name__} ({settings.task_name})",
            "partitioner": type(make_partitioner(settings)).__name__
            + (f" (min_partition_size={DIRICHLET_MIN_PARTITION_SIZE})" if settings.partition == "dirichlet" else ""),
            "strategy": {"name": "flwr.serverapp.strategy.FedAvg", **fedavg_options(settings)},
            "fedge_codec": "fp32 uplink and downlink (CompressedStrategy)",
            "central_evaluation": "every round, on both sides (included in each round's seconds)",
            "fedge_workers_tried": args.fedge_workers,
            "flower_cpus_per_client_tried": args.flower_cpus_per_client,
        },
        "target": {
            "ratio": TARGET_RATIO,
            "judged_on": "steady-state client-rounds/s (rounds 2..N), best fedge setting vs best Flower setting",
            "steady_state_ratio": ratio_steady,
            "steady_state_met": ratio_steady >= TARGET_RATIO,
            "steady_state_pair": [fedge_steady, flower_steady],
            "steady_state_ratio_fastest_rounds": ratio_fastest,  # fastest steady round of each side: less load noise
            "end_to_end_ratio": ratio_total,
            "end_to_end_met": ratio_total >= TARGET_RATIO,
            "end_to_end_pair": [fedge_total, flower_total],
            # CPU seconds of each runtime's whole process tree (load-independent), rounds 2..N
            "training_floor_cpu_ms_per_client_round": floor_ms,
            "training_floor_measurements": floors,
            "runtime_overhead_ratio": ratio_overhead,
            "runtime_overhead_met": ratio_overhead >= TARGET_RATIO,
            "runtime_overhead_pair": [fedge_overhead, flower_overhead],
            "cpu_per_client_round_ratio": ratio_cpu,
            # each repeat's ratios (best setting of each side within the repeat): min and median
            "per_repeat": per_repeat,
        },
        "runs": runs,
        "sanity": {
            "final_accuracy": {name: run["final_accuracy"] for name, run in runs.items()},
            "max_abs_weight_difference_vs_best_flower_run": {
                name: max_weight_difference(finals[name], finals[flower_steady]) for name in runs
            },
        },
        "notes": _notes(runs, fedge_steady, flower_steady, machine, after_load) + list(args.note),
        "machine": {**machine, "load_average_1m_after": after_load},
        "bench_wall_s": time.perf_counter() - started,  # the whole benchmark, every run and both floors
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")

    console.print(_table(runs, settings.rounds))
    console.print(
        f"fedge / Flower, best of each: steady state [bold]{ratio_steady:.1f}x[/bold] "
        f"(fastest rounds {ratio_fastest:.1f}x), "
        f"end to end [bold]{ratio_total:.1f}x[/bold]; target >= {TARGET_RATIO:g}x (steady state): "
        + ("[green]met[/green]" if ratio_steady >= TARGET_RATIO else "[red]not met[/red]")
    )
    console.print(
        f"CPU per client-round (whole process trees, rounds 2..N): fedge {runs[fedge_overhead][cpu_key]:.2f} ms, "
        f"Flower {runs[flower_overhead][cpu_key]:.2f} ms ({ratio_cpu:.1f}x); training alone {floor_ms:.2f} ms; "
        f"runtime overhead fedge {runs[fedge_overhead][overhead]:.2f} ms, Flower {runs[flower_overhead][overhead]:.2f} ms: "
        f"[bold]{ratio_overhead:.1f}x[/bold]"
    )
    console.print(
        f"machine: {machine['usable_cores']} cores, load average {machine['load_average_1m']:.1f} "
        f"-> {after_load:.1f}; results: {args.out}"
    )
    return payload


if __name__ == "__main__":
    main()
