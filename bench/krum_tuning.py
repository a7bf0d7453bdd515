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
#: Candidate settings (strategy overrides) by name. 10 devices, f = 1: ``partition`` keeps
#: Krum's precondition (more than 2 f_b + 2 buckets) up to s = 2, ``resample`` up to s = 3.
CANDIDATES: dict[str, list[str]] = {
    "s1": ["strategy.bucket_size=1"],
    "partition2": ["strategy.bucket_size=2", "strategy.bucket_mode=partition"],
    "resample2": ["strategy.bucket_size=2", "strategy.bucket_mode=resample"],
    "resample3": ["strategy.bucket_size=3", "strategy.bucket_mode=resample"],
}
BASELINE = "s1"
FEDAVG = "FedAvg"


def run_job(job: tuple[str, str, int, int]) -> dict[str, Any]:
    """One top-k cell: ``(candidate, attack, seed, rounds)``; candidate ``FedAvg`` = clean FedAvg."""
    candidate, attack, seed, rounds = job
    strategy = FEDAVG if candidate == FEDAVG else "SparseKrum"
    run = run_cell((strategy, attack, "topk", seed, rounds), extra=tuple(CANDIDATES.get(candidate, [])))
    return {**run, "candidate": candidate}


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per candidate: clean gap per seed (mean, worst) and mean gap per attack; the chosen one."""
    clean = {r["seed"]: r["accuracy"] for r in runs if r["candidate"] == FEDAVG}
    table: dict[str, dict[str, Any]] = {}
    for name in CANDIDATES:
        mine = [r for r in runs if r["candidate"] == name and r["seed"] in clean]
        gaps = {a: [100 * (clean[r["seed"]] - r["accuracy"]) for r in mine if r["attack"] == a] for a in ATTACKS}
        if not gaps["none"]:
            continue
        attacked = {a: statistics.fmean(g) for a, g in gaps.items() if a != "none" and g}
        table[name] = {
            "overrides": CANDIDATES[name],
            "clean_gap_pp_per_seed": {r["seed"]: round(100 * (clean[r["seed"]] - r["accuracy"]), 2) for r in mine if r["attack"] == "none"},
            "clean_gap_pp_mean": statistics.fmean(gaps["none"]), "clean_gap_pp_worst": max(gaps["none"]),
            "attack_gap_pp_mean": attacked, "attacks_gap_pp_mean": statistics.fmean(attacked.values()) if attacked else None,
        }
    base = table.get(BASELINE, {}).get("attacks_gap_pp_mean")
    eligible = [n for n, t in table.items() if base is None or t["attacks_gap_pp_mean"] is None or t["attacks_gap_pp_mean"] <= base + 1.0]
    chosen = min(eligible, key=lambda n: (table[n]["clean_gap_pp_worst"], table[n]["clean_gap_pp_mean"]))
    return {"candidates": table, "chosen": chosen, "chosen_overrides": CANDIDATES[chosen],
            "holds_on_dev": table[chosen]["clean_gap_pp_worst"] <= MARGIN_PP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--attacks", nargs="*", default=ATTACKS)
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--add", action="store_true", help="keep the runs krum_tuning.json has; run only the missing cells")
    args = parser.parse_args()
    path = RESULTS / "krum_tuning.json"
    kept = json.loads(path.read_text())["runs"] if args.add and path.exists() else []
    done = {(r["candidate"], r["attack"], r["seed"]) for r in kept}
    jobs = [(FEDAVG, "none", seed, args.rounds) for seed in DEV_SEEDS]
    jobs += [(c, a, seed, args.rounds) for a in args.attacks for c in args.candidates for seed in DEV_SEEDS]
    jobs = [j for j in jobs if j[:3] not in done]
    load_before, started = os.getloadavg(), time.perf_counter()
    runs = list(kept)
    with mp.get_context("spawn").Pool(args.jobs, initializer=start_worker) as pool:
        for run in pool.imap_unordered(run_job, jobs):
            runs.append(run)
            print(f"[{len(runs) - len(kept)}/{len(jobs)}] {run['candidate']} {run['attack']} seed {run['seed']}: {run['accuracy']:.4f}", flush=True)
    payload = {"seeds": DEV_SEEDS, "rounds": args.rounds, "compression": "topk", "candidate_overrides": CANDIDATES,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
               **choose(runs), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(json.dumps({k: payload[k] for k in ("candidates", "chosen", "holds_on_dev")}, indent=2))


if __name__ == "__main__":
    main()
