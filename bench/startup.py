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

REPO = Path(__file__).resolve().parents[1]
SIM = "import sys; sys.argv[0] = 'fedge-sim'; from fedge.simulations.sim_cli import main; main()"
#: The child of a timed run: stamps the end of every round (wall clock, seconds since the epoch).
TIMED_RUN = """
import json, os, sys, time
import fedge.simulations.experiment as experiment
stamps = []
original = experiment.run_federation
def run_federation(*args, on_round=None, **kwargs):
    def stamped(record):
        stamps.append(time.time())
        if on_round is not None:
            on_round(record)
    return original(*args, on_round=stamped, **kwargs)
experiment.run_federation = run_federation
sys.argv = ['fedge-sim', *sys.argv[1:]]
from fedge.simulations.sim_cli import main
try:
    main()
except SystemExit:
    pass
print('STAMPS ' + json.dumps(stamps))
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


def _run_start_up(tree: Path | None, out: Path, rounds: int) -> dict[str, float]:
    launched = time.time()
    seconds, stdout = _timed(["-c", TIMED_RUN, f"rounds={rounds}", "progress=false", f"hydra.run.dir={out}"], tree, out.parent)
    stamps = json.loads(stdout.rsplit("STAMPS ", 1)[1])
    rounds_s = [b - a for a, b in zip(stamps, stamps[1:])]
    steady = statistics.median(rounds_s[1:])
    return {"start_up_s": stamps[0] - launched + rounds_s[0] - steady, "to_round_0_end_s": stamps[0] - launched, "total_s": seconds}


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
        times: dict[str, list[float]] = {"help": [], "import_torch": [], "help_baseline": []}
        start_up: dict[str, list[dict[str, float]]] = {"this": [], "baseline": []}
        full: dict[str, list[float]] = {"this": [], "baseline": []}
        for i in range(repeats):  # alternate every side in each repetition
            times["help"].append(_timed(["-c", SIM, "--help"], None, tmp)[0])
            times["import_torch"].append(_timed(["-c", "import torch"], None, tmp)[0])
            times["help_baseline"].append(_timed(["-c", SIM, "--help"], old, tmp)[0])
            start_up["this"].append(_run_start_up(None, tmp / f"this-{i}", rounds))
            start_up["baseline"].append(_run_start_up(old, tmp / f"baseline-{i}", rounds))
        for i in range(full_runs):
            full["this"].append(_timed(["-c", SIM, "progress=false", f"hydra.run.dir={tmp / f'full-this-{i}'}"], None, tmp)[0])
            full["baseline"].append(_timed(["-c", SIM, "progress=false", f"hydra.run.dir={tmp / f'full-old-{i}'}"], old, tmp)[0])
    result: dict[str, object] = {name: _summary(v) for name, v in times.items()}
    for side, runs in start_up.items():
        result[f"default_run_start_up_{side}"] = _summary([r["start_up_s"] for r in runs])
        result[f"default_run_to_round_0_end_{side}"] = _summary([r["to_round_0_end_s"] for r in runs])
    if full_runs:
        result["full_default_run_this"] = _summary(full["this"])
        result["full_default_run_baseline"] = _summary(full["baseline"])
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
    lines += ["", "| ratio | of minima | of medians |", "|---|---|---|"]
    lines += [f"| {label} | {_ratio(result, a, b, 'min'):.2f} | {_ratio(result, a, b, 'median'):.2f} |" for label, a, b in ratios]
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
