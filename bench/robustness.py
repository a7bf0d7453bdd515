"""Robustness scorecard (``python -m bench.robustness``): defences x attacks x compression.

Every cell is a ``fedge-sim`` run (digits, 10 devices, Dirichlet 0.5, in-process clients)
with ``attack.fraction`` = 0.2 (2 attackers, drawn by seed) from round 1, over several
seeds. Strategies: Flower's FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan and
fedge's NormBoundedFedAvg (FedAvg + adaptive norm bound), SparseMedian and
SparseTrimmedAvg (:mod:`fedge.strategies.delta_aggregation`: robust rules over each
coordinate's senders, meaningful on top-k updates), screened FedAvg, and FLTrust and its
screen alone (:mod:`fedge.strategies.fltrust`: scored against the server's own reference
update on 300 root examples of the training pool). Attacks: none, sign-flip, scaling,
ALIE, IPM, label flip, backdoor (:mod:`fedge.simulations.attacks`). Compression: none,
q8, topk.

Per cell: final central accuracy (mean and min over seeds), its gap to clean FedAvg at
the same compression (percentage points, mean over seeds, paired by seed), and for the
backdoor the final success rate. Writes ``bench/results/robustness.{json,md}`` and
``robustness.png`` (heat-map of the gap). The markdown names, for must-show 1 and 2 of
issue 12, the rows that hold and the rows that fail.

``--jobs`` runs cells in parallel worker processes (one torch thread each; default 2 =
the 2-core budget), each running many cells in-process (start-up paid once per worker,
start-up objects frozen out of the garbage collector: :func:`start_worker`). The json
records the whole process tree's CPU seconds (user + system) next to the wall time and
the load; CPU seconds / 2 is the grid's time on two otherwise idle cores. ``--quick``
runs a reduced grid (topk only, 1 seed) for a smoke check; ``--preset must-shows`` only
the top-k cells of issue 12's must-shows 1, 2 and 4; ``--replot`` rewrites the markdown
and the heat-map from ``robustness.json`` (the json is rewritten after every finished
cell). Every grid also runs the honest-only reference (``absent``: the attackers'
replies dropped) per compression and seed.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cpu_time import finished_tree_cpu_s

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CONF_DIR = REPO / "conf"

STRATEGIES: dict[str, list[str]] = {
    "FedAvg": ["strategy=fedavg"],
    "FedAvg+norm bound": ["strategy=norm_bounded"],
    "FedMedian": ["strategy=fedmedian", "server.allow_flower_robust_on_sparse=true"],  # Flower's rule as is: refused on top-k otherwise (fedge.conf.sparse_rules)
    "FedTrimmedAvg": ["strategy=fedtrimmedavg", "server.allow_flower_robust_on_sparse=true"],  # Flower's rule as is: refused on top-k otherwise (fedge.conf.sparse_rules)
    "Krum": ["strategy=krum", "server.allow_flower_robust_on_sparse=true"],  # Flower's rule as is: refused on top-k otherwise (fedge.conf.sparse_rules)
    "MultiKrum": ["strategy=multikrum", "server.allow_flower_robust_on_sparse=true"],  # Flower's rule as is: refused on top-k otherwise (fedge.conf.sparse_rules)
    "Bulyan": ["strategy=bulyan", "server.allow_flower_robust_on_sparse=true"],  # Flower's rule as is: refused on top-k otherwise (fedge.conf.sparse_rules)
    "SparseMedian": ["strategy=sparse_median"],
    "SparseTrimmedAvg": ["strategy=sparse_trimmed_avg"],
    "SparseKrum": ["strategy=sparse_krum"],
    "SparseMultiKrum": ["strategy=sparse_multikrum"],
    "SparseBulyan": ["strategy=sparse_bulyan"],
    "Screened FedAvg": ["strategy=screened_fedavg"],
    "FLTrust": ["strategy=fltrust", "strategy.root_examples=300"],  # 100 (the paper's) measured too slow on digits: see README
    "FLTrust screen": ["strategy=fltrust_screen", "strategy.root_examples=300"],
}
#: Flower's rules fedge refuses on a sparse uplink (fedge.conf.sparse_rules) -> the rule a user is told to run
#: instead; must-show 2 holds each to its replacement (the Flower row runs only with the opt-in, to show the collapse).
SPARSE_REPLACEMENT = {"FedMedian": "SparseMedian", "FedTrimmedAvg": "SparseTrimmedAvg", "Krum": "SparseKrum", "MultiKrum": "SparseMultiKrum", "Bulyan": "SparseBulyan"}
#: The rules issue 12's scorecard names (the full grid adds fedge's sparse-aware and reference-scored rules).
ISSUE_STRATEGIES = ["FedAvg", "FedAvg+norm bound", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan"]
ATTACKS = ["none", "signflip", "scaling", "alie", "ipm", "labelflip", "backdoor"]
#: The honest-only reference (row attack ``absent``): FedAvg with the same seeded 20% of
#: devices drawn as attackers, but their replies dropped (``attack=nan_examples``: they
#: claim a NaN ``num-examples`` and the reply validator refuses every one). What a perfect
#: defence could reach: FedAvg of the honest devices' data only. Not a defence (it knows
#: who attacks), so never a candidate in the verdicts.
ABSENT = "absent"
ROW_ATTACKS = [*ATTACKS, ABSENT]
COMPRESSIONS = ["none", "q8", "topk"]
#: Settings shared by every cell (a small, fast federation).
BASE = ["progress=false", "backend.num_workers=0", "num_clients=10", "client.local_epochs=1", "attack.fraction=0.2"]
MARGIN_PP = 2.0


def start_worker() -> None:
    """Once per worker process: one torch thread, every import paid, Hydra's config tree
    registered and opened; what is alive now is frozen out of the garbage collector.

    Why the freeze: Flower's Bulyan converts each reply with
    ``ArrayRecord.to_numpy_ndarrays(keep_input=False)``, which calls ``gc.collect()`` per
    reply; a full collection walks every tracked object of a process holding torch,
    Hydra and flwr (~0.5 s each, measured: 110 of a Bulyan cell's 130 s). Frozen objects
    are skipped, so a collection costs only what the running cell allocated (each cell
    freezes what survived the one before: lazily imported modules, caches).
    """
    import gc

    import torch
    from hydra import initialize_config_dir

    import fedge.simulations.backdoor  # noqa: F401  (imported by run_experiment anyway)
    from fedge.conf.schema import register_configs
    from fedge.simulations.experiment import run_experiment  # noqa: F401

    torch.set_num_threads(1)
    register_configs()
    initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3").__enter__()  # Hydra's global state, kept open for every cell
    gc.collect()
    gc.freeze()


def run_cell(job: tuple[str, str, str, int, int]) -> dict[str, Any]:
    """One run; returns its final accuracy and backdoor success (a worker process that ran
    :func:`start_worker`)."""
    import gc

    from hydra import compose
    from rich.console import Console

    from fedge.simulations.experiment import run_experiment

    strategy, attack, compression, seed, rounds = job
    attack_group = "nan_examples" if attack == ABSENT else attack
    overrides = [*BASE, *STRATEGIES[strategy], f"attack={attack_group}", f"compression={compression}", f"seed={seed}", f"rounds={rounds}"]
    if attack == "none":
        overrides.remove("attack.fraction=0.2")
    start, cpu = time.perf_counter(), time.process_time()
    gc.collect()  # the previous cell's garbage (cheap: what lived before it is frozen) ...
    gc.freeze()  # ... and what survives (modules the first cell imported, caches) joins the frozen
    cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as out:
        outcome = run_experiment(cfg, Path(out), console=Console(quiet=True))
        assert outcome.results_path is not None
        results = json.loads(outcome.results_path.read_text())
    success = results.get("attack", {}).get("backdoor_success")
    attackers = set(results.get("attack", {}).get("attackers", []))
    return {
        "strategy": strategy, "attack": attack, "compression": compression, "seed": seed,
        "accuracy": outcome.result.final.accuracy, "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,  # this process's CPU time (clients run in-process)
        "backdoor_success": success[-1] if success else None,
        "robust_decisions": sum(d["action"] != "kept" for d in results.get("robust", [])),
        "excluded_attackers": sum(d["action"] == "excluded" and d["node_id"] in attackers for d in results.get("robust", [])),
        "excluded_honest": sum(d["action"] == "excluded" and d["node_id"] not in attackers for d in results.get("robust", [])),
        "dropped_replies": len(results.get("dropped_replies", [])),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (strategy, attack, compression): accuracy, gap to clean FedAvg, backdoor."""
    clean = {(r["compression"], r["seed"]): r["accuracy"] for r in runs if r["strategy"] == "FedAvg" and r["attack"] == "none"}
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["strategy"], run["attack"], run["compression"]), []).append(run)
    rows = []
    for (strategy, attack, compression), group in cells.items():
        accuracies = [r["accuracy"] for r in group]
        gaps = [100 * (clean[(compression, r["seed"])] - r["accuracy"]) for r in group if (compression, r["seed"]) in clean]
        success = [r["backdoor_success"] for r in group if r["backdoor_success"] is not None]
        rows.append({
            "strategy": strategy, "attack": attack, "compression": compression, "seeds": len(group),
            "accuracy_mean": statistics.fmean(accuracies), "accuracy_min": min(accuracies),
            "gap_pp_mean": statistics.fmean(gaps) if gaps else None, "gap_pp_max": max(gaps) if gaps else None,
            "backdoor_success_mean": statistics.fmean(success) if success else None,
            # screened rules: (device, round) pairs excluded, mean over seeds
            "excluded_attackers_mean": statistics.fmean(r.get("excluded_attackers", 0) for r in group),
            "excluded_honest_mean": statistics.fmean(r.get("excluded_honest", 0) for r in group),
        })
    return rows


def verdicts(rows: list[dict[str, Any]], compression: str = "topk") -> dict[str, Any]:
    """Issue 12's must-show 1 (per attack: the best defence within MARGIN_PP of clean FedAvg,
    worst seed) and 2 (no attack: every robust rule within MARGIN_PP of FedAvg) at ``compression``."""
    at = [r for r in rows if r["compression"] == compression and r["gap_pp_max"] is not None]
    per_attack = {}
    for attack in ATTACKS:
        candidates = [r for r in at if r["attack"] == attack and r["strategy"] != "FedAvg"]
        if candidates:
            best = min(candidates, key=lambda r: r["gap_pp_max"])
            per_attack[attack] = {"best": best["strategy"], "gap_pp_max": best["gap_pp_max"], "gap_pp_mean": best["gap_pp_mean"],
                                  "seeds": best["seeds"], "holds": best["gap_pp_max"] <= MARGIN_PP}
    absent = next((r for r in at if r["attack"] == ABSENT), None)
    honest_only = None if absent is None else {"gap_pp_max": absent["gap_pp_max"], "gap_pp_mean": absent["gap_pp_mean"], "seeds": absent["seeds"]}
    clean_rules = {r["strategy"]: {"gap_pp_max": r["gap_pp_max"], "gap_pp_mean": r["gap_pp_mean"], "seeds": r["seeds"],
                                   "holds": r["gap_pp_max"] <= MARGIN_PP} for r in at if r["attack"] == "none" and r["strategy"] != "FedAvg"}
    if compression in ("topk", "randk"):  # Flower's rule is refused there: a user runs its replacement, which must hold
        for rule, entry in clean_rules.items():
            if rule in SPARSE_REPLACEMENT:
                entry.update(refused_use=SPARSE_REPLACEMENT[rule], holds=clean_rules.get(SPARSE_REPLACEMENT[rule], {}).get("holds", False))
    return {"compression": compression, "margin_pp": MARGIN_PP, "attacks": per_attack, "no_attack": clean_rules, "honest_only": honest_only}


def heatmap(rows: list[dict[str, Any]], path: Path) -> None:
    """Gap to clean FedAvg (pp, mean over seeds): strategies x (attack, compression)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    columns = [(a, c) for c in COMPRESSIONS for a in ATTACKS if any(r["attack"] == a and r["compression"] == c for r in rows)]
    grid = np.full((len(strategies), len(columns)), np.nan)
    for r in rows:
        if r["gap_pp_mean"] is not None and (r["attack"], r["compression"]) in columns:
            grid[strategies.index(r["strategy"]), columns.index((r["attack"], r["compression"]))] = r["gap_pp_mean"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(columns), 1.2 + 0.45 * len(strategies)))
    image = ax.imshow(np.clip(grid, 0, 50), cmap="RdYlGn_r", vmin=0, vmax=50, aspect="auto")
    ax.set_xticks(range(len(columns)), [f"{a}\n{c}" for a, c in columns], fontsize=7, rotation=90)
    ax.set_yticks(range(len(strategies)), strategies, fontsize=8)
    for i in range(len(strategies)):
        for j in range(len(columns)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="accuracy gap to clean FedAvg, pp (clipped at 50)")
    ax.set_title("fedge robustness scorecard: 20% attackers")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def resumed_note(payload: dict[str, Any]) -> str:
    """`` (N cells kept from ...)`` for a ``--resume``d grid, else ''."""
    if not payload.get("resumed_cells"):
        return ""
    return (f" ({payload['resumed_cells']} cells kept from an earlier run of the same cells and settings, with their share of "
            f"its recorded CPU (before this version: the cells' own, not the process tree's) and wall time; it ran {payload.get('resumed_jobs') or '?'} worker processes and, if older, without the "
            "start-up freeze below, which changes cost, not results)")


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Robustness scorecard (`python -m bench.robustness`)",
        "",
        f"Grid: {payload['grid']}; {payload['done']}.",
        "",
        f"Host: {payload['host']}: load average {payload['loadavg_before'][0]:.1f} before, "
        f"{payload['loadavg_after'][0]:.1f} after. {payload['wall_s']:.0f} s wall with {payload['jobs']} worker processes"
        f"{resumed_note(payload)}; "
        f"{payload['cpu_s_total']:.0f} CPU seconds (user + system"
        f"{' of the whole process tree' if payload.get('cpu_s_is_process_tree') else ', the cells only'}), i.e. about "
        f"{payload['idle_2core_wall_s_estimate'] / 60:.0f} min on two otherwise idle cores (CPU seconds / 2: two workers, "
        "one torch thread each, nothing shared between them, so parallel efficiency ~1; the wall time above is the "
        "shared host's).",
        "",
        "How the grid is run (the same protocol for every cell): two long-lived worker processes (one torch thread "
        "each) run the cells in-process, so interpreter, torch and Hydra start-up are paid once per worker, not per "
        "cell; each worker freezes its start-up objects out of Python's garbage collector (Flower's Bulyan calls "
        "`gc.collect()` once per reply: ~0.5 s each on an unfrozen heap, 110 of a Bulyan cell's 130 s).",
        "",
        "Honest-only reference (attack `absent`): FedAvg with the same seeded 20% of devices drawn as attackers but "
        "their replies dropped by the validator (`attack=nan_examples`): what a defence that removes exactly the "
        "attackers could reach, the attackers' data being lost with them.",
        "",
        "Every FedAvg row runs behind fedge's reply validator (strategies/reply_validation.py, as fedge-server): "
        "updates above 10x the round's median norm are dropped before any rule sees them.",
        "Gap = clean FedAvg accuracy (same compression, same seed) - this cell, percentage points; mean / worst seed.",
        "",
        "Excluded: (device, round) updates a screened rule left out, attackers / honest devices, mean over seeds.",
        "",
        "| strategy | attack | compression | accuracy mean | accuracy min | gap pp mean | gap pp worst | backdoor success | excluded att / honest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in sorted(payload["rows"], key=lambda r: (COMPRESSIONS.index(r["compression"]), ROW_ATTACKS.index(r["attack"]), list(STRATEGIES).index(r["strategy"]))):
        lines.append(
            f"| {r['strategy']} | {r['attack']} | {r['compression']} | {r['accuracy_mean']:.3f} | {r['accuracy_min']:.3f} | "
            f"{fmt(r['gap_pp_mean'], '.1f')} | {fmt(r['gap_pp_max'], '.1f')} | {fmt(r['backdoor_success_mean'], '.2f')} | "
            f"{r['excluded_attackers_mean']:.1f} / {r['excluded_honest_mean']:.1f} |"
        )
    v = payload["verdicts"]
    lines += ["", f"## Must-show 1 ({v['compression']}): best defence per attack, worst seed within {v['margin_pp']} pp?", ""]
    lines += ["A cell holds when its worst seed is within the margin; the mean over seeds is given too.", ""]
    lines += [f"- {a}: {e['best']} worst seed {e['gap_pp_max']:.1f} pp, mean {e.get('gap_pp_mean', float('nan')):.1f} pp "
              f"({e.get('seeds', '?')} seeds) -> {'holds' if e['holds'] else 'FAILS'}" for a, e in v["attacks"].items()]
    honest = v.get("honest_only")
    if honest:
        lines += ["", f"Honest-only reference (FedAvg, the attackers' replies dropped): worst seed {honest['gap_pp_max']:.1f} pp, "
                  f"mean {honest['gap_pp_mean']:.1f} pp ({honest['seeds']} seeds): the floor a defence that excludes the "
                  "attackers starts from."]
    lines += ["", f"## Must-show 2 ({v['compression']}, no attack): every rule within {v['margin_pp']} pp of FedAvg?", ""]
    lines += [f"- {s}: worst seed {e['gap_pp_max']:.1f} pp, mean {e.get('gap_pp_mean', float('nan')):.1f} pp "
              f"({e.get('seeds', '?')} seeds)"
              + (f" (Flower's, refused at {v['compression']} without server.allow_flower_robust_on_sparse; a user runs {e['refused_use']})" if e.get("refused_use") else "")
              + f" -> {'holds' if e['holds'] else 'FAILS'}" for s, e in v["no_attack"].items()]
    backdoor = [r for r in payload["rows"] if r["attack"] == "backdoor" and r["backdoor_success_mean"] is not None]
    lines += ["", "## Must-show 4: backdoor success rate (triggered test inputs of other classes read as the target)", ""]
    lines += ["Per compression: FedAvg (no defence) and the best defence (lowest success among the rules whose worst seed "
              f"is within {MARGIN_PP} pp of clean FedAvg; any rule if none is), then every rule.", ""]
    for compression in COMPRESSIONS:
        at = [r for r in backdoor if r["compression"] == compression]
        plain = next((r for r in at if r["strategy"] == "FedAvg"), None)
        defences = [r for r in at if r["strategy"] != "FedAvg"]
        usable = [r for r in defences if r["gap_pp_max"] is not None and r["gap_pp_max"] <= MARGIN_PP] or defences
        if plain and usable:
            best = min(usable, key=lambda r: r["backdoor_success_mean"])
            lines.append(f"- {compression}: FedAvg {plain['backdoor_success_mean']:.2f} (accuracy {plain['accuracy_mean']:.3f}); "
                         f"best defence {best['strategy']} {best['backdoor_success_mean']:.2f} (accuracy {best['accuracy_mean']:.3f}, "
                         f"worst-seed gap {fmt(best['gap_pp_max'], '.1f')} pp)")
    lines += [""]
    lines += [f"- {r['strategy']} ({r['compression']}): {r['backdoor_success_mean']:.2f}, accuracy {r['accuracy_mean']:.3f}" for r in backdoor]
    return "\n".join(lines) + "\n"


#: ``--preset must-shows``: the top-k cells issue 12's must-shows 1, 2 and 4 need, most
#: telling first (a run stopped early still answers them): clean FedAvg and the screened
#: defence, the defence under every attack, FedAvg under the backdoor, fedge's other rules
#: without attack, FedAvg under the other attacks, then Flower's rules without attack.
MUST_SHOW_ORDER = [
    *[(s, "none") for s in ("FedAvg", "Screened FedAvg")],
    ("FedAvg", ABSENT),
    *[("Screened FedAvg", a) for a in ATTACKS if a != "none"],
    ("FedAvg", "backdoor"),
    *[("FLTrust", a) for a in ATTACKS],
    *[("FLTrust screen", a) for a in ("none", "signflip", "ipm", "labelflip", "scaling", "alie", "backdoor")],
    *[(s, "none") for s in ("SparseMedian", "SparseTrimmedAvg", "SparseKrum", "SparseMultiKrum", "SparseBulyan", "FedAvg+norm bound")],
    *[("FedAvg", a) for a in ATTACKS if a not in ("none", "backdoor")],
    *[(s, "none") for s in ("FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan")],
]


def plan(args: argparse.Namespace) -> list[tuple[str, str, str, int, int]]:
    """The cells to run, in order: ``(strategy, attack, compression, seed, rounds)``."""
    seeds = range(1 if args.quick else args.seeds)
    if args.preset == "must-shows":
        return [(s, a, "topk", seed, args.rounds) for s, a in MUST_SHOW_ORDER for seed in seeds]
    compressions = ["topk"] if args.quick else args.compressions
    strategies = sorted(set(args.strategies) | {"FedAvg"}, key=list(STRATEGIES).index)
    attacks = sorted(set(args.attacks) | {"none"}, key=ATTACKS.index)
    cells = [(s, a, c, seed, args.rounds) for seed in seeds for c in compressions for a in attacks for s in strategies]
    reference = [("FedAvg", ABSENT, c, seed, args.rounds) for seed in seeds for c in compressions] if len(attacks) > 1 else []
    return reference + cells


def resumed_runs(jobs: list[tuple[str, str, str, int, int]], rounds: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """``--resume``: the runs of ``robustness.json`` that are planned cells at ``rounds``
    rounds, and the kept cells' share of the earlier run's CPU seconds and wall time."""
    import re

    path = RESULTS / "robustness.json"
    if not path.exists():
        return [], {}
    payload = json.loads(path.read_text())
    found = re.search(r"(\d+) rounds", payload.get("grid", ""))
    if payload.get("rounds", int(found.group(1)) if found else None) != rounds:
        return [], {}
    planned = {job[:4] for job in jobs}
    runs = [r for r in payload["runs"] if (r["strategy"], r["attack"], r["compression"], r["seed"]) in planned]
    if not runs:
        return [], {}
    cpu_share = sum(r["cpu_s"] for r in runs) / max(sum(r["cpu_s"] for r in payload["runs"]), 1e-9)
    return runs, {"cells": len(runs), "cpu_s": payload["cpu_s_total"] * cpu_share, "wall_s": payload["wall_s"] * cpu_share,
                  "jobs": payload["jobs"]}


def payload_of(runs: list[dict[str, Any]], jobs: list[tuple[str, str, str, int, int]], args: argparse.Namespace,
               started: float, load_before: tuple[float, float, float], tree_cpu_s: float | None = None) -> dict[str, Any]:
    """results.json's content for the runs so far (written after every run); ``tree_cpu_s``:
    the whole process tree's CPU seconds, known once the workers have exited."""
    rows = summarise(runs)
    earlier: dict[str, float] = getattr(args, "earlier", None) or {}
    cells_cpu = sum(r["cpu_s"] for r in runs)
    # a resumed grid: the kept cells' share of the earlier run's process-tree CPU and wall time
    cpu = (tree_cpu_s + earlier.get("cpu_s", 0.0)) if tree_cpu_s is not None else cells_cpu
    wall = time.perf_counter() - started + earlier.get("wall_s", 0.0)
    return {
        "grid": f"{len(jobs)} cells ({args.preset or 'grid'}: {len({j[0] for j in jobs})} strategies, "
                f"{len({j[1] for j in jobs})} attacks, {len({j[2] for j in jobs})} compressions, "
                f"{len({j[3] for j in jobs})} seeds), {args.rounds} rounds, digits, 10 devices (Dirichlet 0.5), "
                f"1 local epoch, 20% attackers from round 1",
        "done": f"{len(runs)} of {len(jobs)} cells",
        "host": f"{platform.node()} {os.cpu_count()} CPUs shared with other jobs",
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "jobs": args.jobs, "wall_s": wall, "rounds": args.rounds, "resumed_cells": int(earlier.get("cells", 0)),
        "resumed_jobs": int(earlier.get("jobs", 0)),
        "cells_cpu_s": cells_cpu,  # sum of the cells' own CPU time (each in its worker process)
        # user+sys of the whole process tree (parent, workers' start-up and cells); until the
        # workers exit (a run in progress), the cells' sum
        "cpu_s_total": cpu, "cpu_s_is_process_tree": tree_cpu_s is not None,
        # the honest lower bound of this grid's wall time on two otherwise idle cores: CPU / 2
        # (parallel efficiency ~1: two workers, one torch thread each, nothing shared)
        "idle_2core_wall_s_estimate": cpu / 2,
        "verdicts": verdicts(rows) if any(r["compression"] == "topk" for r in rows) else {},
        "rows": rows, "runs": runs,
    }


def write(payload: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robustness.json").write_text(json.dumps(payload, indent=2))
    if payload["verdicts"]:
        text = markdown(payload)
        cost = RESULTS / "robustness_cost.json"
        if cost.exists():  # must-show 5's projection (--cost-sample)
            text += "\n".join(projection_markdown(json.loads(cost.read_text()))) + "\n"
        (RESULTS / "robustness.md").write_text(text)


def run_cost_sample() -> dict[str, Any]:
    """Run :data:`COST_SAMPLE` in one warm worker process; its cells and the projection."""
    load_before = os.getloadavg()
    with mp.get_context("spawn").Pool(1, initializer=start_worker) as pool:
        sample = [{**run, "rounds": job[4]} for job, run in zip(COST_SAMPLE, pool.imap(run_cell, COST_SAMPLE))]
    return {"loadavg_before": load_before, "loadavg_after": os.getloadavg(), "host": f"{platform.node()} {os.cpu_count()} CPUs",
            "cells": sample, "projection": cost_projection(sample)}


def write_cost(cost: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "robustness_cost.json").write_text(json.dumps(cost, indent=2))


#: ``--cost-sample``: 20-round cells spanning the rules (cheap, Bulyan, the
#: reference-scored ones) and the compressions, plus two 1-round cells (the per-cell
#: fixed cost: config, data, partition, workers' first use), run one after another in one
#: warm worker exactly as the grid runs them.
COST_SAMPLE: list[tuple[str, str, str, int, int]] = [
    ("FedAvg", "none", "none", 0, 1), ("FedAvg", "none", "topk", 0, 1),
    ("FedAvg", "none", "none", 0, 20), ("FedAvg", "signflip", "q8", 1, 20), ("FedAvg", "none", "topk", 0, 20),
    ("Bulyan", "ipm", "q8", 0, 20), ("Bulyan", "none", "topk", 1, 20), ("Krum", "alie", "none", 2, 20),
    ("FedMedian", "labelflip", "q8", 0, 20), ("MultiKrum", "scaling", "topk", 1, 20), ("FedTrimmedAvg", "none", "none", 1, 20),
    ("SparseMedian", "signflip", "topk", 2, 20), ("Screened FedAvg", "ipm", "topk", 0, 20), ("FLTrust", "labelflip", "topk", 0, 20),
    ("FedAvg+norm bound", "backdoor", "q8", 2, 20), ("SparseTrimmedAvg", "alie", "none", 0, 20),
]


def cost_projection(sample: list[dict[str, Any]], rounds: int = 20, seeds: int = 3) -> dict[str, Any]:
    """A **projection** (not a measurement) of the full grid's CPU seconds from ``sample``
    (``run_cell`` results with their ``rounds``): each strategy's measured CPU per
    ``rounds``-round cell (the mean over its sampled cells; a strategy not sampled gets
    the mean of the sampled non-Bulyan rules), times its cells in the full grid (every
    attack x compression x seed, plus the honest-only reference as FedAvg)."""
    full = [r for r in sample if r.get("rounds", rounds) == rounds]
    per: dict[str, list[float]] = {}
    for r in full:
        per.setdefault(r["strategy"], []).append(r["cpu_s"])
    means = {s: statistics.fmean(v) for s, v in per.items()}
    typical = statistics.fmean([v for s, v in means.items() if s != "Bulyan"]) if means else 0.0
    cells_per_strategy = len(ATTACKS) * len(COMPRESSIONS) * seeds
    cpu = {s: means.get(s, typical) * cells_per_strategy for s in STRATEGIES}
    cpu["FedAvg"] += means.get("FedAvg", typical) * len(COMPRESSIONS) * seeds  # the honest-only reference cells
    cells = len(STRATEGIES) * cells_per_strategy + len(COMPRESSIONS) * seeds
    total = sum(cpu.values())
    issue = sum(cpu[s] for s in ISSUE_STRATEGIES)
    one_round = [r["cpu_s"] for r in sample if r.get("rounds") == 1]
    return {
        "rounds": rounds, "seeds": seeds, "cells": cells, "sampled_cells": len(full),
        "cpu_s_per_cell": {s: round(v, 2) for s, v in means.items()}, "cpu_s_per_cell_unsampled": round(typical, 2),
        "fixed_cpu_s_per_cell": round(statistics.fmean(one_round), 2) if one_round else None,
        "cpu_s_by_strategy": {s: round(v) for s, v in cpu.items()},
        "projected_cpu_s": round(total), "projected_idle_2core_wall_min": round(total / 2 / 60, 1),
        # the scorecard issue 12 names (its 7 rules: 441 cells + the reference)
        "issue_rules_cells": len(ISSUE_STRATEGIES) * cells_per_strategy + len(COMPRESSIONS) * seeds,
        "issue_rules_projected_cpu_s": round(issue), "issue_rules_projected_idle_2core_wall_min": round(issue / 2 / 60, 1),
    }


def projection_markdown(cost: dict[str, Any]) -> list[str]:
    """The cost projection's section of robustness.md."""
    p = cost["projection"]
    per = ", ".join(f"{s} {v:.1f}" for s, v in sorted(p["cpu_s_per_cell"].items(), key=lambda kv: -kv[1]))
    return [
        "", f"## Must-show 5: the full grid's cost (a PROJECTION from {p['sampled_cells']} measured cells, not a run of the grid)", "",
        f"Sample (`python -m bench.robustness --cost-sample`): {p['sampled_cells']} {p['rounds']}-round cells in one warm worker "
        f"(one torch thread), run one after another as the grid runs them; host load average {cost['loadavg_before'][0]:.1f} "
        f"before, {cost['loadavg_after'][0]:.1f} after (shared with other jobs: CPU seconds, not wall time, are the figure). "
        f"CPU seconds per cell (user + system of the worker): {per}; strategies not sampled: {p['cpu_s_per_cell_unsampled']:.1f}. "
        f"Fixed part of a cell (a 1-round cell: config, data, partition, set-up): {p['fixed_cpu_s_per_cell']} CPU-s.",
        "",
        f"Projected full grid ({len(STRATEGIES)} strategies x {len(ATTACKS)} attacks x {len(COMPRESSIONS)} compressions x "
        f"{p['seeds']} seeds + the honest-only reference = {p['cells']} cells, {p['rounds']} rounds): "
        f"**{p['projected_cpu_s'] / 60:.0f} CPU-minutes, ~{p['projected_idle_2core_wall_min']:.0f} min on two idle cores** "
        "(CPU seconds / 2: two workers, nothing shared). By strategy (CPU-s): "
        + ", ".join(f"{s} {v}" for s, v in p["cpu_s_by_strategy"].items()) + ".",
        "",
        f"Issue 12's own scorecard ({', '.join(ISSUE_STRATEGIES)}: {p['issue_rules_cells']} cells): "
        f"**{p['issue_rules_projected_cpu_s'] / 60:.0f} CPU-minutes, ~{p['issue_rules_projected_idle_2core_wall_min']:.0f} min on two idle cores** "
        f"(`python -m bench.robustness --strategies {' '.join(repr(s) if ' ' in s else s for s in ISSUE_STRATEGIES)}`).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="topk only, 1 seed (smoke run)")
    parser.add_argument("--preset", choices=["must-shows"], default=None,
                        help="must-shows: only the top-k cells issue 12's must-shows 1, 2 and 4 need")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--attacks", nargs="*", default=ATTACKS)
    parser.add_argument("--compressions", nargs="*", default=COMPRESSIONS)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs robustness.json already has for planned cells at the same --rounds; run only the rest")
    parser.add_argument("--cost-sample", action="store_true",
                        help="run COST_SAMPLE (16 cells) in one warm worker and write robustness_cost.json: "
                             "the full grid's projected CPU (must-show 5), without running the grid")
    parser.add_argument("--replot", action="store_true",
                        help="only rewrite robustness.md and .png from robustness.json (e.g. of a stopped run)")
    args = parser.parse_args()
    if args.cost_sample:
        write_cost(run_cost_sample())
        return
    if args.replot:
        payload = json.loads((RESULTS / "robustness.json").read_text())
        payload["verdicts"] = verdicts(payload["rows"])
        write(payload)
        heatmap(payload["rows"], RESULTS / "robustness.png")
        return
    jobs = plan(args)
    started, load_before = time.perf_counter(), os.getloadavg()
    runs, earlier = resumed_runs(jobs, args.rounds) if args.resume else ([], {})
    done = {(r["strategy"], r["attack"], r["compression"], r["seed"]) for r in runs}
    todo = [job for job in jobs if job[:4] not in done]
    args.earlier = earlier
    pool = mp.get_context("spawn").Pool(args.jobs, initializer=start_worker)  # workers live for the whole grid: imports paid once
    for i, run in enumerate(pool.imap_unordered(run_cell, todo), len(runs) + 1):  # dispatched in plan order: a stopped run has the first cells
        runs.append(run)
        print(f"[{i}/{len(jobs)}] {run['strategy']:<18} {run['attack']:<10} {run['compression']:<5} seed {run['seed']}: "
              f"acc {run['accuracy']:.3f} ({run['seconds']:.1f} s wall, {run['cpu_s']:.1f} s cpu)", flush=True)
        write(payload_of(runs, jobs, args, started, load_before))
    pool.close()
    pool.join()  # the workers have exited: their CPU time is in RUSAGE_CHILDREN
    payload = payload_of(runs, jobs, args, started, load_before, finished_tree_cpu_s())
    write(payload)
    heatmap(payload["rows"], RESULTS / "robustness.png")
    print(f"wrote {RESULTS / 'robustness.md'} in {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
