"""Scale benchmark (``python -m bench.scale``): 100, 1,000 and 10,000 clients on one machine.

Each configuration is one ``fedge-sim`` run in a fresh interpreter (the default
``backend=local``: 2 worker processes), ``compression=topk`` (global top-1% with error
feedback), the digits CNN on :class:`bench.scale_tasks.TiledDigits` (the training pool
repeated so 10,000 clients each hold examples), ``partition=iid``, one local step per
client-round (the runtime is what is measured), central evaluation every round.
Per configuration, with 100 clients sampled per round (10 rounds) and with every client
sampled (``--all-rounds`` rounds):

* peak RSS of the whole process tree (the server process, its fork server, workers and
  resource tracker: the sum of their RSS, sampled every 0.2 s; pages the workers share
  with the fork server count once per process, so this over-counts) and peak PSS
  (shared pages split between the processes that map them);
* seconds per round (median of the rounds after the first; the first, which also builds
  the clients, separately) and start-up (launch to the end of round 0);
* per-client state bytes: the buffers the clients keep after training
  (:func:`bench.client_state.state_bytes`, in this process on 100 clients, 2 rounds).

With ``--baseline REF`` every configuration up to ``--baseline-max`` clients is also run
on commit ``REF`` (unpacked beside this tree), alternating with this tree.
Writes ``bench/results/scale.{json,md}`` with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import results_files
from bench.startup import _baseline_tree, _env, timed_run_args

REPO = Path(__file__).resolve().parents[1]
TASK_FILE = Path(__file__).resolve().parent / "scale_tasks.py"
SAMPLED = 100


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of ``pid`` in bytes; zeros once it is gone."""
    try:
        rss = pss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
        return rss, pss
    except OSError:
        return 0, 0


class TreeMemory(threading.Thread):
    """Samples the process tree of ``pid`` every ``period_s``; keeps the peak sums."""

    def __init__(self, pid: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.peak_rss = self.peak_pss = self.peak_processes = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.period_s):
            pids = _tree(self.pid)
            sizes = [_memory(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(r for r, _ in sizes))
            self.peak_pss = max(self.peak_pss, sum(p for _, p in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))

    def stop(self) -> None:
        self._done.set()
        self.join()


def overrides(clients: int, sampled: int, rounds: int, copies: int) -> list[str]:
    """The ``fedge-sim`` overrides of one configuration."""
    return [
        "task=custom", f"task.path={TASK_FILE}", "task.cls=TiledDigits", f"task.args.copies={copies}",
        f"num_clients={clients}", "partition=iid", "compression=topk", f"rounds={rounds}",
        f"strategy.fraction_train={sampled / clients}", f"strategy.min_available_nodes={clients}",
        "client.local_steps=1", "progress=false",
    ]


def run_one(clients: int, sampled: int, rounds: int, copies: int, out: Path, tree: Path | None) -> dict[str, object]:
    """One fedge-sim run: its stamps, peak memory of its process tree, wall seconds."""
    args = [sys.executable, *timed_run_args(out, overrides(clients, sampled, rounds, copies))]
    launched = time.time()
    proc = subprocess.Popen(args, env=_env(tree), cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.stop()
    if proc.returncode != 0 or "STAMPS " not in stdout:
        raise RuntimeError(f"run failed ({proc.returncode}): {stderr[-2000:]}")
    stamps = json.loads(stdout.rsplit("STAMPS ", 1)[1])["wall"]
    rounds_s = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "clients": clients, "sampled": sampled, "rounds": rounds,
        "start_up_s": stamps[0] - launched,
        "first_round_s": rounds_s[0],
        "round_s": statistics.median(rounds_s[1:]) if len(rounds_s) > 1 else rounds_s[0],
        "total_s": time.time() - launched,
        "peak_rss_bytes": sampler.peak_rss, "peak_pss_bytes": sampler.peak_pss, "processes": sampler.peak_processes,
    }


def per_client_state(clients: int = 100, rounds: int = 2) -> dict[str, float]:
    """State bytes per client after ``rounds`` of topk + error feedback, every client sampled."""
    from flwr.app import ArrayRecord, ConfigRecord

    from bench.client_state import state_bytes
    from bench.scale_tasks import TiledDigits
    from fedge.client import TrainConfig
    from hydra import compose, initialize_config_dir

    from fedge.conf.build import build_strategy
    from fedge.conf.schema import register_configs
    from fedge.server import run_federation
    from fedge.server.evaluation import CentralEvaluator
    from fedge.simulations.clients import ClientRecipe, node_id_of
    from fedge.simulations.local_grid import LocalGrid

    task = TiledDigits(copies=1)
    data = task.load()
    parts = np.array_split(np.arange(len(data.train)), clients)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, TrainConfig(local_steps=1))
    recipe.use_data(data)
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["compression=topk", f"num_clients={clients}"])
    strategy = build_strategy(cfg, max(len(p) for p in parts))  # CompressedStrategy(FedAvg), topk + error feedback
    model = task.build_model()
    random.seed(0)
    with LocalGrid(recipe) as grid:
        run_federation(strategy, grid, ArrayRecord(model.state_dict()), CentralEvaluator(task, data.test), rounds, ConfigRecord())
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_client = state_bytes(recipe.client(n) for n in recipe.partitions) / clients
    return {"clients": clients, "per_client_state_bytes": per_client, "model_fp32_bytes": model_bytes,
            "ratio_to_model": per_client / model_bytes}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Scale: 100 to 10,000 clients on one machine",
        "",
        f"`{s['command']}`. Each row is one `fedge-sim` run in a fresh interpreter: backend=local (2 workers), "
        "compression=topk (global top-1%, error feedback), digits CNN (38,282 weights) on TiledDigits "
        f"(the training pool x{s['copies']}, noisy copies), partition=iid, one local step per client-round, "
        "central evaluation every round. Peak RSS: the sum over the process tree (server, fork server, workers, "
        "resource tracker), sampled every 0.2 s; pages the workers share with the fork server count in each "
        "process, so it over-counts; PSS splits them.",
        "",
        *results_files.load_note(result["machine"]),
        "| tree | clients | sampled/round | rounds | start-up (s) | first round (s) | s/round | peak RSS (MB) | peak PSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['tree']} | {run['clients']:,} | {run['sampled']:,} | {run['rounds']} | {run['start_up_s']:.1f} | "
            f"{run['first_round_s']:.1f} | {run['round_s']:.2f} | {run['peak_rss_bytes'] / 2**20:,.0f} | "
            f"{run['peak_pss_bytes'] / 2**20:,.0f} |"
        )
    st = result["state"]
    lines += [
        "",
        f"Per-client state after {st['clients']} clients trained 2 rounds (topk + error feedback): "
        f"{st['per_client_state_bytes'] / 1024:.1f} KiB per client = {st['ratio_to_model']:.2f}x the model's fp32 size "
        f"({st['model_fp32_bytes'] / 1024:.1f} KiB): the error-feedback residual, the rest shared "
        "(`bench/client_state.py`; `tests/test_scale_state.py` asserts <= 1.5x).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--rounds", type=int, default=10, help="rounds with 100 sampled per round (0: that row is not run)")
    parser.add_argument("--all-rounds", type=int, default=2, help="rounds with every client sampled (0: that row is not run)")
    parser.add_argument("--copies", type=int, default=8, help="copies of the digits training pool (1,437 each)")
    parser.add_argument("--baseline", default="", help="commit to run beside this tree (alternating)")
    parser.add_argument("--baseline-max", type=int, default=1000, help="largest client count run on the baseline")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    sizes = [int(n) for n in args.sizes.split(",")]
    result: dict[str, object] = {
        "settings": {"sizes": sizes, "rounds": args.rounds, "all_rounds": args.all_rounds, "copies": args.copies,
                     "baseline": args.baseline,
                     "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])},
        "state": per_client_state(),
        "runs": [],
    }
    runs: list[dict[str, object]] = result["runs"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="fedge-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        old = _baseline_tree(args.baseline, tmp) if args.baseline else None
        for n in sizes:
            for sampled, rounds in ((min(SAMPLED, n), args.rounds), (n, args.all_rounds)):
                if rounds == 0:
                    continue  # --rounds 0 / --all-rounds 0: that row is not run
                if sampled == n and n == SAMPLED and rounds == args.all_rounds and args.rounds != args.all_rounds:
                    continue  # 100 of 100 is the row above
                sides = [("this", None)] + ([(args.baseline, old)] if old is not None and n <= args.baseline_max else [])
                for name, tree in sides:
                    run = run_one(n, sampled, rounds, args.copies, tmp / f"{name}-{n}-{sampled}", tree)
                    run["tree"] = name
                    runs.append(run)
                    result["machine"] = results_files.machine(load_start)
                    results_files.write("scale", result, markdown(result))  # after every run: partial results survive

if __name__ == "__main__":
    main()
