"""SparseKrum's setting chosen on dev seeds (``python -m bench.krum_tuning``).

The robustness scorecard (``bench/robustness.py``) judges seeds 0-2; a setting tuned on
them would be fitted to the test. This runs the scorecard's cells (same BASE settings,
same workers: :func:`bench.robustness.run_cell`) for SparseKrum at ``compression=topk``
on **dev seeds 3-8** only, for each candidate setting (strategy overrides, below), without
attack and under each of the scorecard's six attacks, plus clean FedAvg per seed (the
gap's reference), and writes ``bench/results/krum_tuning.json`` (the earlier tuning runs
kept under its ``history`` key).

Second tuning (wave 7, dev seeds 3-8; the first, seeds 3-5, chose resampled buckets of 2
among plain Krum, partition 2, resample 2 and resample 3: ``history[0]``). Resample 2's
clean gap per seed was too noisy to hold 2 pp on every seed (dev 3-5 -0.8 / 1.7 / 0.8 pp,
scorecard seeds 0-2 -0.3 / 2.2 / 1.9 pp): Krum keeps one bucket's update a round. Its
candidates added momentum across rounds (:mod:`fedge.strategies.update_momentum`) to
resample 2: each device's momentum, beta 0.5 and 0.8 (Karimireddy, He and Jaggi 2021), and
server momentum of Krum's outputs, beta 0.5 (``history[1]``). Its rule chose resample 2
(no momentum): every momentum candidate lost more clean accuracy (worst dev seed 5.8 /
13.3 / 4.2 pp against resample 2's 4.2, mean 3.2 / 8.7 / 2.1 against 1.5).

Third tuning (this file's ``candidates``; the same dev seeds 3-8, seen by the second tuning:
FedAvg's and resample 2's cells are its runs, reused). What the second showed: the clean
gap is a bias, not round noise. Krum on the buckets systematically leaves out the honest
devices whose non-IID data makes their updates far from the rest (two or three of ten
never selected in 20 rounds, measured on scratch seeds 9, 10: neither dev nor scorecard),
and momentum makes the same buckets win longer. The lever is more mixing per bucket:
resampled buckets of 3 (the largest Krum's precondition allows with 10 devices, f = 1),
alone and with the adaptive norm bound at 2 x the round's median norm (``clip=median``,
``clip_factor=2``: an honest update is rarely clipped, a sign-flip x10 one is cut to 2 x;
it bounds what a bucket mean can carry of one attacker), and resample 2 with the same
bound. Scratch seeds 9-11 (looked at before this rule was written; never dev or scorecard
seeds) guided the choice of candidates.

Rule fixed before the run (``RULE``): among the candidates whose mean gap over the six
attacks (mean over attacks of the per-attack mean over dev seeds) is at most 1 pp worse
than ``resample2``'s (the default: a setting must not buy clean accuracy with robustness),
the one with the smallest worst-dev-seed clean gap to FedAvg (ties: the smaller mean clean
gap); the chosen setting is then written into ``conf/strategy/sparse_krum.yaml`` and
SparseKrum's defaults by hand and committed before the scorecard's seeds 0-2 run again.
(The second tuning's rule was the same.)

Result (added after the run, commit 190ec54): the rule chose ``resample3+bound2`` (clean gap
mean 1.1 pp, worst dev seed 2.5 pp, so not within 2 pp on every dev seed; mean gap over the
six attacks 5.0 pp against resample 2's 8.1). The scorecard's seeds 0-2, run once after it
was committed: -0.3 / 1.1 / 0.3 pp (bench/results/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

from bench.cpu_time import finished_tree_cpu_s
from bench.robustness import ATTACKS, MARGIN_PP, RESULTS, run_cell, start_worker

DEV_SEEDS = [3, 4, 5, 6, 7, 8]
#: Candidate settings (strategy overrides) by name, each spelled out in full (so a run
#: means the same whatever the config's defaults are when it runs).
RESAMPLE2 = ["strategy.bucket_size=2", "strategy.bucket_mode=resample"]
BOUND2 = ["strategy.clip=median", "strategy.clip_factor=2.0"]
CANDIDATES: dict[str, list[str]] = {
    "resample2": [*RESAMPLE2, "strategy.momentum=0.0"],
    "resample3": ["strategy.bucket_size=3", "strategy.bucket_mode=resample", "strategy.momentum=0.0"],
    "resample3+bound2": ["strategy.bucket_size=3", "strategy.bucket_mode=resample", "strategy.momentum=0.0", *BOUND2],
    "resample2+bound2": [*RESAMPLE2, "strategy.momentum=0.0", *BOUND2],
}
BASELINE = "resample2"
#: The selection rule, as run by :func:`choose` (recorded in the results file).
RULE = ("among the candidates whose mean gap over the six attacks is at most 1 pp worse than resample2's, the smallest "
        "worst-dev-seed clean gap to FedAvg (ties: smaller mean clean gap); dev seeds 3-8 only")
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
    if not eligible:  # a partial run (written after every cell) without a clean cell yet
        return {"candidates": table, "chosen": None, "chosen_overrides": None, "holds_on_dev": None}
    chosen = min(eligible, key=lambda n: (table[n]["clean_gap_pp_worst"], table[n]["clean_gap_pp_mean"]))
    return {"candidates": table, "chosen": chosen, "chosen_overrides": CANDIDATES[chosen],
            "holds_on_dev": table[chosen]["clean_gap_pp_worst"] <= MARGIN_PP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--attacks", nargs="*", default=ATTACKS)
    parser.add_argument("--candidates", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--add", action="store_true", help="keep the runs krum_tuning.json has of these candidates (same name "
                        "and overrides) and FedAvg; run only the missing cells")
    args = parser.parse_args()
    path = RESULTS / "krum_tuning.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    kept = previous["runs"] if args.add and previous else []
    history = previous.pop("history", []) if previous else []
    if previous and (not args.add or previous.get("candidate_overrides") != CANDIDATES):  # an earlier tuning: kept whole
        history.append(previous)
    same = {n for n, o in (previous or {}).get("candidate_overrides", {}).items() if CANDIDATES.get(n) == o}
    kept = [r for r in kept if r["candidate"] in same or r["candidate"] == FEDAVG]
    done = {(r["candidate"], r["attack"], r["seed"]) for r in kept}
    jobs = [(FEDAVG, "none", seed, args.rounds) for seed in DEV_SEEDS]
    jobs += [(c, a, seed, args.rounds) for a in args.attacks for c in args.candidates for seed in DEV_SEEDS]
    jobs = [j for j in jobs if j[:3] not in done]
    load_before, started, cpu_before = os.getloadavg(), time.perf_counter(), finished_tree_cpu_s()
    runs = list(kept)
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write() -> dict[str, Any]:  # after every cell: a run stopped half way keeps what it ran (then --add)
        payload = {"seeds": DEV_SEEDS, "rounds": args.rounds, "compression": "topk", "candidate_overrides": CANDIDATES,
                   "rule": RULE, "baseline": BASELINE, "workers": args.jobs, "cells_done": len(runs) - len(kept), "cells_planned": len(jobs),
                   "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "wall_s": time.perf_counter() - started,
                   "cpu_s": finished_tree_cpu_s() - cpu_before, **choose(runs), "runs": runs, "history": history}
        path.write_text(json.dumps(payload, indent=2))
        return payload

    with mp.get_context("spawn").Pool(args.jobs, initializer=start_worker) as pool:
        for run in pool.imap_unordered(run_job, jobs):
            runs.append(run)
            print(f"[{len(runs) - len(kept)}/{len(jobs)}] {run['candidate']} {run['attack']} seed {run['seed']}: {run['accuracy']:.4f}", flush=True)
            write()
    payload = write()
    print(json.dumps({k: payload[k] for k in ("candidates", "chosen", "holds_on_dev")}, indent=2))


if __name__ == "__main__":
    main()
