"""Start-up benchmark (``python -m bench.startup``, part of ``make bench``).

Side by side, in alternating runs, each a fresh interpreter launched from here:

- ``fedge-sim --help`` (this tree) against ``python -c "import torch"``, and against
  ``fedge-sim --help`` of a baseline commit (``--baseline``, default ``ac970f4``, the
  commit before the lazy imports; unpacked with ``git archive`` into a temporary folder
  and put first on ``PYTHONPATH``, same interpreter and packages);
- the default run's start-up: from launching ``fedge-sim`` until round 1 has started
  for real. Round 1 also holds the workers' warm-up (they import and build their
  clients while the server evaluates round 0), so, as in :mod:`bench.timing`, start-up =
  time to the end of round 0 + round 1's excess over the median later round. Runs the
  default config with ``rounds=4 progress=false``, this tree against the baseline;
- optionally (``--full-runs N``) the whole default run (``make run``: 20 rounds), this tree
  against the baseline.

Beside each wall-clock figure of a run, the CPU seconds (user + system) of its whole
process tree (:mod:`bench.cpu_time`): on a shared machine they do not grow with the load.

Writes ``bench/results/startup.{json,md}`` with min and median of each side and the
1-minute load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import results_files
from bench.cpu_time import finished_tree_cpu_s

REPO = Path(__file__).resolve().parents[1]
SIM = "import sys; sys.argv[0] = 'fedge-sim'; from fedge.simulations.sim_cli import main; main()"
CPU_TIME = REPO / "bench" / "cpu_time.py"
#: The script of a timed run, shaped like the ``fedge-sim`` console script (its top level
#: imports the CLI, the rest runs under ``if __name__ == "__main__"``), so a fork server or
#: a spawned worker that imports the program's ``__main__`` pays what it pays under
#: ``make run``. It stamps the end of every round (wall clock, seconds since the epoch) and
#: the CPU seconds of its process tree then (itself, the fork server, the workers:
#: :func:`bench.cpu_time.tree_cpu_s`, loaded from this tree by path, as a baseline tree may
#: have no such module), and the tree's CPU seconds at the end (workers that ended included).
TIMED_RUN = """
import sys
from fedge.simulations.sim_cli import main
if __name__ == '__main__':
    import importlib.util, json, time
    spec = importlib.util.spec_from_file_location("startup_cpu_time", sys.argv.pop(1))
    cpu_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_time)
    import fedge.simulations.experiment as experiment
    stamps, cpu = [], []
    original = experiment.run_federation
    def run_federation(*args, on_round=None, **kwargs):
        def stamped(record):
            stamps.append(time.time())
            cpu.append(cpu_time.tree_cpu_s(reaped=True))
            if on_round is not None:
                on_round(record)
        return original(*args, on_round=stamped, **kwargs)
    experiment.run_federation = run_federation
    sys.argv = ['fedge-sim', *sys.argv[1:]]
    try:
        main()
    except SystemExit:
        pass
    print('STAMPS ' + json.dumps({"wall": stamps, "cpu": cpu, "cpu_end": cpu_time.tree_cpu_s(reaped=True)}))
"""


def _env(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _timed(args: Sequence[str], tree: Path | None, cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=_env(tree), cwd=cwd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout


def timed_run_args(out: Path, overrides: Sequence[str]) -> list[str]:
    """The interpreter's arguments of one timed ``fedge-sim`` run (:data:`TIMED_RUN`, written
    beside ``out`` once) with ``overrides``, in Hydra output directory ``out``. Its stdout
    ends with ``STAMPS`` and a json object: ``wall`` (the end of each round, seconds since
    the epoch, round 0 first), ``cpu`` (the process tree's CPU seconds then), ``cpu_end``."""
    script = out.parent / "fedge-sim-timed.py"
    if not script.exists():
        script.write_text(TIMED_RUN)
    return [str(script), str(CPU_TIME), *overrides, f"hydra.run.dir={out}"]


def _run_start_up(tree: Path | None, out: Path, rounds: int | None) -> dict[str, float]:
    """One timed run (``rounds=None``: the default's 20): start-up (wall and CPU of the
    process tree), time to the end of round 0, and the whole run (wall and CPU)."""
    launched = time.time()
    args = timed_run_args(out, [*([f"rounds={rounds}"] if rounds else []), "progress=false"])
    seconds, stdout = _timed(args, tree, out.parent)
    stamps = json.loads(stdout.rsplit("STAMPS ", 1)[1])
    wall, cpu = stamps["wall"], stamps["cpu"]
    rounds_s = [b - a for a, b in zip(wall, wall[1:])]
    rounds_cpu = [b - a for a, b in zip(cpu, cpu[1:])]
    return {
        "start_up_s": wall[0] - launched + rounds_s[0] - statistics.median(rounds_s[1:]),
        "start_up_cpu_s": cpu[0] + rounds_cpu[0] - statistics.median(rounds_cpu[1:]),
        "to_round_0_end_s": wall[0] - launched,
        "total_s": seconds,
        "total_cpu_s": stamps["cpu_end"],
    }


def _summary(values: list[float]) -> dict[str, float | list[float]]:
    return {"min": min(values), "median": statistics.median(values), "runs": values}


def _baseline_tree(ref: str, into: Path) -> Path:
    """The files of commit ``ref``, unpacked (``git archive``; the repository is not changed)."""
    archive = into / "baseline.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "archive", ref], cwd=REPO, stdout=fh, check=True)
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    (tree / "fedge").mkdir(exist_ok=True)  # the fedge/<folder> symlinks come with the archive
    return tree


def measure(repeats: int, baseline: str, full_runs: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedge-startup-") as tmp_dir:
        tmp = Path(tmp_dir)
        old = _baseline_tree(baseline, tmp)
        times: dict[str, list[float]] = {"help": [], "import_torch": [], "help_baseline": [], "import_torch_cpu": []}
        start_up: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
        full: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
        for i in range(repeats):  # alternate every side in each repetition
            times["help"].append(_timed(["-c", SIM, "--help"], None, tmp)[0])
            before = finished_tree_cpu_s()
            times["import_torch"].append(_timed(["-c", "import torch"], None, tmp)[0])
            times["import_torch_cpu"].append(finished_tree_cpu_s() - before)
            times["help_baseline"].append(_timed(["-c", SIM, "--help"], old, tmp)[0])
            start_up["this"].append(_run_start_up(None, tmp / f"this-{i}", rounds))
            start_up["baseline"].append(_run_start_up(old, tmp / f"baseline-{i}", rounds))
        for i in range(full_runs):
            full["this"].append(_run_start_up(None, tmp / f"full-this-{i}", None))
            full["baseline"].append(_run_start_up(old, tmp / f"full-old-{i}", None))
    result: dict[str, object] = {name: _summary(v) for name, v in times.items()}
    for side, runs in start_up.items():
        result[f"default_run_start_up_{side}"] = _summary([r["start_up_s"] for r in runs])
        result[f"default_run_start_up_cpu_{side}"] = _summary([r["start_up_cpu_s"] for r in runs])
        result[f"default_run_to_round_0_end_{side}"] = _summary([r["to_round_0_end_s"] for r in runs])
    for side, runs in full.items():
        if runs:
            result[f"full_default_run_{side}"] = _summary([r["total_s"] for r in runs])
            result[f"full_default_run_cpu_{side}"] = _summary([r["total_cpu_s"] for r in runs])
    return result


def _ratio(result: dict, a: str, b: str, stat: str) -> float:
    return result[a][stat] / result[b][stat]


def markdown(result: dict) -> str:
    s = result["settings"]
    rows = [
        ("`fedge-sim --help`", "help"),
        ('`python -c "import torch"`', "import_torch"),
        (f"`fedge-sim --help` at {s['baseline']}", "help_baseline"),
        ("default run, start-up before round 1", "default_run_start_up_this"),
        (f"default run, start-up before round 1, at {s['baseline']}", "default_run_start_up_baseline"),
        ("default run, launch to the end of round 0", "default_run_to_round_0_end_this"),
        (f"default run, launch to the end of round 0, at {s['baseline']}", "default_run_to_round_0_end_baseline"),
    ]
    if "full_default_run_this" in result:
        rows += [("whole default run (`make run`)", "full_default_run_this"),
                 (f"whole default run at {s['baseline']}", "full_default_run_baseline")]
    cpu_rows = [
        ('`python -c "import torch"`', "import_torch_cpu"),
        ("default run, start-up before round 1", "default_run_start_up_cpu_this"),
        (f"default run, start-up before round 1, at {s['baseline']}", "default_run_start_up_cpu_baseline"),
    ]
    if "full_default_run_cpu_this" in result:
        cpu_rows += [("whole default run", "full_default_run_cpu_this"),
                     (f"whole default run at {s['baseline']}", "full_default_run_cpu_baseline")]
    lines = [
        "# Start-up",
        "",
        f"Fresh interpreters launched one after another, every side once per repetition ({s['repeats']} repetitions). "
        f"Baseline: commit `{s['baseline']}` unpacked beside this tree, same interpreter and packages. "
        f"Command: `{s['command']}`.",
        "",
        *results_files.load_note(result["machine"]),
        "| what | min (s) | median (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {result[key]['min']:.2f} | {result[key]['median']:.2f} |" for label, key in rows]
    ratios = [
        ("`fedge-sim --help` / `import torch`", "help", "import_torch"),
        ("start-up before round 1 / `import torch`", "default_run_start_up_this", "import_torch"),
        ("`fedge-sim --help`: baseline / this", "help_baseline", "help"),
        ("start-up before round 1: baseline / this", "default_run_start_up_baseline", "default_run_start_up_this"),
    ]
    if "full_default_run_this" in result:
        ratios.append(("whole default run: baseline / this", "full_default_run_baseline", "full_default_run_this"))
    lines += ["", "| ratio (wall clock) | of minima | of medians |", "|---|---|---|"]
    lines += [f"| {label} | {_ratio(result, a, b, 'min'):.2f} | {_ratio(result, a, b, 'median'):.2f} |" for label, a, b in ratios]
    lines += ["", "CPU seconds (user + system) of each run's whole process tree (server process, fork server, workers; "
              "start-up: up to the end of round 0, plus round 1's excess over the median later round). They do not "
              "grow with the machine's load as the wall clock does; on 2 idle cores the wall clock of a process tree "
              "that keeps both busy is at least half its CPU seconds.", "",
              "| what | CPU min (s) | CPU median (s) |", "|---|---|---|"]
    lines += [f"| {label} | {result[key]['min']:.2f} | {result[key]['median']:.2f} |" for label, key in cpu_rows if key in result]
    cpu_ratios = [("start-up before round 1 / `import torch`", "default_run_start_up_cpu_this", "import_torch_cpu"),
                  ("start-up before round 1: baseline / this", "default_run_start_up_cpu_baseline", "default_run_start_up_cpu_this")]
    if "full_default_run_cpu_this" in result:
        cpu_ratios.append(("whole default run: baseline / this", "full_default_run_cpu_baseline", "full_default_run_cpu_this"))
    lines += ["", "| ratio (CPU seconds) | of minima | of medians |", "|---|---|---|"]
    lines += [f"| {label} | {_ratio(result, a, b, 'min'):.2f} | {_ratio(result, a, b, 'median'):.2f} |" for label, a, b in cpu_ratios]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default="ac970f4", help="commit to compare with (before the lazy imports)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the start-up runs (>= 3)")
    parser.add_argument("--full-runs", type=int, default=0, help="whole default runs per side (20 rounds each)")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    result = measure(args.repeats, args.baseline, args.full_runs, args.rounds)
    result["settings"] = {"repeats": args.repeats, "baseline": args.baseline, "rounds": args.rounds, "full_runs": args.full_runs,
                          "command": "python -m bench.startup " + " ".join(argv if argv is not None else sys.argv[1:])}
    result["machine"] = results_files.machine(load_start)
    results_files.write("startup", result, markdown(result))


if __name__ == "__main__":
    main()
