"""SparseKrum's ``bucket_size`` chosen on dev seeds (``python -m bench.krum_tuning``).

The robustness scorecard (``bench/robustness.py``) judges seeds 0-2; a setting tuned on
them would be fitted to the test. This runs the scorecard's cells (same BASE settings,
same workers: :func:`bench.robustness.run_cell`) for SparseKrum at ``compression=topk``
on **dev seeds 3, 4, 5** only, for each candidate ``strategy.bucket_size``, without attack
and under each of the scorecard's attacks, plus clean FedAvg per seed (the gap's
reference), and writes ``bench/results/krum_tuning.json``.

Rule fixed before the run: the candidate with the smallest worst-seed gap to clean FedAvg
without attack, among those whose mean gap over the attacks is at most 1 pp worse than
``bucket_size`` 1's (bucketing must not buy clean accuracy with robustness); the chosen
value is then written into ``conf/strategy/sparse_krum.yaml`` by hand and committed before
the scorecard's seeds run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

from bench.robustness import ATTACKS, MARGIN_PP, RESULTS, run_cell, start_worker

DEV_SEEDS = [3, 4, 5]
CANDIDATES = [1, 2]  # 10 devices, f = 1: ceil(10 / s) > 2f + 2 = 4 allows s <= 2


def run_job(job: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """One cell: ``(strategy, attack, seed, rounds, bucket_size)``; bucket_size 0 = FedAvg's cell."""
    strategy, attack, seed, rounds, size = job
    extra = (f"strategy.bucket_size={size}",) if strategy == "SparseKrum" else ()
    run = run_cell((strategy, attack, "topk", seed, rounds), extra=extra)
    return {**run, "bucket_size": size}


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per candidate: clean gap (mean, worst seed) and mean gap under attack; the chosen one."""
    clean = {r["seed"]: r["accuracy"] for r in runs if r["strategy"] == "FedAvg"}
    table: dict[int, dict[str, Any]] = {}
    for size in CANDIDATES:
        mine = [r for r in runs if r["strategy"] == "SparseKrum" and r["bucket_size"] == size]
        gaps = {a: [100 * (clean[r["seed"]] - r["accuracy"]) for r in mine if r["attack"] == a] for a in ATTACKS}
        table[size] = {
            "clean_gap_pp_per_seed": {r["seed"]: round(100 * (clean[r["seed"]] - r["accuracy"]), 2) for r in mine if r["attack"] == "none"},
            "clean_gap_pp_mean": statistics.fmean(gaps["none"]), "clean_gap_pp_worst": max(gaps["none"]),
            "attack_gap_pp_mean": {a: statistics.fmean(g) for a, g in gaps.items() if a != "none" and g},
        }
        attacked = list(table[size]["attack_gap_pp_mean"].values())
        table[size]["attacks_gap_pp_mean"] = statistics.fmean(attacked) if attacked else None
    base = table[1]["attacks_gap_pp_mean"]
    eligible = [s for s in CANDIDATES if base is None or table[s]["attacks_gap_pp_mean"] is None or table[s]["attacks_gap_pp_mean"] <= base + 1.0]
    chosen = min(eligible, key=lambda s: (table[s]["clean_gap_pp_worst"], table[s]["clean_gap_pp_mean"]))
    return {"candidates": table, "chosen_bucket_size": chosen, "holds_on_dev": table[chosen]["clean_gap_pp_worst"] <= MARGIN_PP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--attacks", nargs="*", default=ATTACKS)
    args = parser.parse_args()
    jobs = [("FedAvg", "none", seed, args.rounds, 0) for seed in DEV_SEEDS]
    jobs += [("SparseKrum", a, seed, args.rounds, s) for a in args.attacks for s in CANDIDATES for seed in DEV_SEEDS]
    load_before, started = os.getloadavg(), time.perf_counter()
    with mp.get_context("spawn").Pool(args.jobs, initializer=start_worker) as pool:
        runs = []
        for run in pool.imap_unordered(run_job, jobs):
            runs.append(run)
            print(f"[{len(runs)}/{len(jobs)}] {run['strategy']} s={run['bucket_size']} {run['attack']} seed {run['seed']}: {run['accuracy']:.4f}", flush=True)
    payload = {"seeds": DEV_SEEDS, "rounds": args.rounds, "compression": "topk", "candidates": CANDIDATES,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
               **choose(runs), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "krum_tuning.json").write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: payload[k] for k in ("candidates", "chosen_bucket_size", "holds_on_dev")}, indent=2))


if __name__ == "__main__":
    main()
