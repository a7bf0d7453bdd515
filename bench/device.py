"""The device table: each built-in task on the torch and the numpy runtime, one thread.

    python -m bench.device [--reps 5] [--seeds 0 1 2] [--rounds 10] [--install] [--device-python PY]
    python -m bench.device --install-only   # only the fresh device venv (Python 3.10 when found)

For ``digits``, ``image`` and ``har`` and each runtime, a fresh process (one BLAS/torch
thread, as on a single-core board) loads a device's shard from an ``.npz`` file (as
``fedge-client`` does), builds an ``EdgeClient`` and trains local epochs of the
task's defaults (batch 32, SGD with momentum): ms per training step, ms per local
epoch, the peak training bytes the client reports (weights, gradients, optimiser
state, activations kept for backward) and the process's peak RSS (the
interpreter, numpy, torch if imported, the data, the model; ``VmHWM``). The two runtimes run in
alternating order, ``--reps`` times each; the table gives min and median and the
ratio numpy / torch of the minima, with the machine's load average recorded.

Then the same federation (``har``, ``partition=natural``, 10 subjects) per seed with
an all-torch fleet, an all-numpy fleet and a mixed fleet (``client.runtime_mix.numpy=0.5``):
the final central accuracy of each (issue 18 must-show 2: mixed within 0.5 pp of torch),
one local epoch per round.

``--install`` also builds a fresh venv with only ``fedge[device]`` (numpy, protobuf,
grpcio, cryptography), records its size and distributions (no torch, no flwr), and runs
its ``fedge-client --runtime numpy`` for one ``har`` round against a fedge server in
this process over mTLS (``bench.client_install.run_one_round``). It needs the package
index, and minutes. The venv is made with ``--device-python``, by default an interpreter of
the oldest supported Python (3.10, ``requires-python``) when the machine has one (on PATH
or in pyenv), so the device side is measured on the oldest Python it claims.

Writes ``bench/results/device.json`` and ``bench/results/device.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
OLDEST_PYTHON = "3.10"  # pyproject.toml's requires-python: the device venv is measured on it
TASKS = ("digits", "image", "har")
RUNTIMES = ("torch", "numpy")
SHARD = 400  # examples on the device (a har subject holds ~370 windows)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def peak_rss_mb() -> float:
    """This process's peak resident set, MB: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``,
    which Linux carries over from the forking parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task_name: str, runtime: str, shard: str, epochs: int) -> dict:
    """In a fresh process: train ``epochs`` local epochs; times, bytes, peak RSS."""
    from fedge.client import EdgeClient, TrainConfig
    from fedge.client.data import load_local_data
    from fedge.protos.codecs import encode_update
    from fedge.protos.v1 import task_pb2, tensor_pb2
    from fedge.tasks.registry import resolve_task

    if runtime == "torch":
        import torch

        torch.set_num_threads(1)
    task = resolve_task(task_name)()
    data = load_local_data(shard, getattr(task, "input_shape", None))
    client = EdgeClient(task, data, node_id=1, defaults=TrainConfig(local_epochs=1, batch_size=32), runtime=runtime)
    weights = client.trainer.arrays()
    epoch_s, steps, peak = [], 0, 0
    for r in range(epochs + 1):  # round 0 warms up (imports, allocator, BLAS)
        msg = task_pb2.Task(task_id=f"t{r}", kind="train", server_round=r + 1, node_id=1)
        msg.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS))
        update = client.handle(msg)
        if update.error:
            raise RuntimeError(update.error)
        if r:
            epoch_s.append(update.metrics["compute_s"])
        steps, peak = int(update.metrics["local_steps"]), int(update.metrics["peak_train_bytes"])
    return {
        "epoch_s": epoch_s,
        "steps": steps,
        "peak_train_bytes": peak,
        "peak_rss_mb": peak_rss_mb(),
        "torch_imported": "torch" in sys.modules,
    }


def measure(reps: int, epochs: int, work: Path) -> dict:
    """Alternating torch/numpy child processes per task; min and median per side."""
    from fedge.tasks.registry import resolve_task

    table: dict[str, dict] = {}
    for task_name in TASKS:
        split = resolve_task(task_name)().load().train
        shard = work / f"{task_name}.npz"
        np.savez(shard, x=split.x[:SHARD], y=split.y[:SHARD])
        runs: dict[str, list[dict]] = {r: [] for r in RUNTIMES}
        for rep in range(reps):
            for runtime in (RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.device", "--child", task_name, runtime, str(shard), str(epochs)],
                    check=True, capture_output=True, text=True, cwd=REPO, env={**os.environ, **ONE_THREAD},
                )
                runs[runtime].append(json.loads(out.stdout.strip().splitlines()[-1]))
        row: dict[str, dict] = {}
        for runtime, results in runs.items():
            epochs_s = [min(r["epoch_s"]) for r in results]
            steps = results[0]["steps"]
            row[runtime] = {
                "epoch_ms_min": 1e3 * min(epochs_s),
                "epoch_ms_median": 1e3 * statistics.median(epochs_s),
                "step_ms_min": 1e3 * min(epochs_s) / steps,
                "step_ms_median": 1e3 * statistics.median(epochs_s) / steps,
                "steps_per_epoch": steps,
                "peak_train_bytes": results[0]["peak_train_bytes"],
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in results),
                "torch_imported": results[0]["torch_imported"],
            }
        row["ratio_numpy_over_torch_epoch_min"] = row["numpy"]["epoch_ms_min"] / row["torch"]["epoch_ms_min"]
        table[task_name] = row
        print(task_name, json.dumps(row))
    return table


def federations(seeds: list[int], rounds: int) -> dict:
    """Final accuracy of har federations: all torch, all numpy, half and half, per seed."""
    from hydra import compose, initialize_config_dir

    from fedge.simulations.experiment import run_experiment
    from fedge.conf.schema import register_configs

    register_configs()
    fleets = {"torch": [], "numpy": ["client.runtime=numpy"], "mixed": ["+client.runtime_mix.numpy=0.5"]}
    base = ["task=har", "partition=natural", "num_clients=10", f"rounds={rounds}", "progress=false",
            "backend.num_workers=0", "client.local_epochs=1"]
    out: dict[str, dict] = {name: {} for name in fleets}
    for seed in seeds:
        for name, overrides in fleets.items():
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[*base, f"seed={seed}", *overrides])
            result = run_experiment(cfg).result
            out[name][str(seed)] = result.rounds[-1].accuracy
            print("federation", name, seed, out[name][str(seed)])
    gaps = [abs(out["mixed"][s] - out["torch"][s]) for s in out["torch"]]
    return {
        "task": "har", "partition": "natural", "num_clients": 10, "rounds": rounds, "final_accuracy": out,
        "max_abs_gap_mixed_vs_torch_pp": 100 * max(gaps),
        "mean_accuracy": {name: statistics.mean(acc.values()) for name, acc in out.items()},
    }


def oldest_supported_python() -> str:
    """An interpreter of the oldest Python the package supports (``requires-python``), if
    this machine has one (``python3.10`` on PATH, or pyenv's); else this interpreter."""
    candidates = [shutil.which(f"python{OLDEST_PYTHON}"),
                  *map(str, sorted(Path.home().glob(f".pyenv/versions/{OLDEST_PYTHON}.*/bin/python"), reverse=True))]
    for candidate in filter(None, candidates):  # a pyenv shim on PATH may name a version it cannot run
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return sys.executable


def install(work: Path, python: str) -> dict:
    """A fresh venv of ``python`` with only the device extra; its size; one har round over
    mTLS on numpy, the device's fedge-client running on that interpreter."""
    from bench.client_install import SERVER_ONLY, run_one_round, tree_bytes

    venv = work / "device-venv"
    start = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{REPO}[device]"], check=True)
    seconds = time.perf_counter() - start
    listed = json.loads(subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                                       check=True, capture_output=True, text=True).stdout)
    names = sorted(d["name"].lower() for d in listed)
    site = next((venv / "lib").glob("python*/site-packages"))
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
                             check=True, capture_output=True, text=True).stdout.strip()
    round_report = run_one_round(venv, work, "har", ("--runtime", "numpy"))
    return {
        "device_python": version,
        "distributions": names,
        "torch_absent": "torch" not in names,
        "flwr_absent": "flwr" not in names,
        "server_only_present": sorted(set(names) & SERVER_ONLY),
        "site_packages_mb": tree_bytes(site) / 1e6,
        "install_s": seconds,
        "round": round_report,
    }


def markdown(report: dict) -> str:
    lines = [
        "# Device table: torch vs numpy runtime (one thread)",
        "",
        f"Load average at start {report['load_start']}, at end {report['load_end']} ({report['cpus']} CPUs); "
        f"{report['reps']} alternating runs per side, each the best of {report['epochs']} local epochs; "
        f"a device shard of {SHARD} examples, batch 32.",
        "",
        "| task | runtime | ms/step min (median) | ms/epoch min (median) | numpy/torch epoch | peak training bytes | peak RSS MB | torch imported |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task_name, row in report["speed"].items():
        for runtime in RUNTIMES:
            r = row[runtime]
            ratio = f"{row['ratio_numpy_over_torch_epoch_min']:.2f}x" if runtime == "numpy" else ""
            lines.append(
                f"| {task_name} | {runtime} | {r['step_ms_min']:.2f} ({r['step_ms_median']:.2f}) | "
                f"{r['epoch_ms_min']:.0f} ({r['epoch_ms_median']:.0f}) | {ratio} | {r['peak_train_bytes']:,} | "
                f"{r['peak_rss_mb_max']:.0f} | {r['torch_imported']} |"
            )
    fed = report.get("federations")
    if fed:
        lines += ["", f"## har federation, partition=natural, 10 clients, {fed['rounds']} rounds: final accuracy", "",
                  "| seed | torch | numpy | mixed (half numpy) |", "|---|---|---|---|"]
        for seed in fed["final_accuracy"]["torch"]:
            acc = {k: fed["final_accuracy"][k][seed] for k in ("torch", "numpy", "mixed")}
            lines.append(f"| {seed} | {acc['torch']:.4f} | {acc['numpy']:.4f} | {acc['mixed']:.4f} |")
        lines.append(f"\nLargest |mixed - torch| gap: {fed['max_abs_gap_mixed_vs_torch_pp']:.2f} pp.")
    inst = report.get("install")
    if inst:
        lines += ["", f"## Fresh Python {inst.get('device_python', '?')} venv with only `fedge[device]`: "
                  f"{inst['site_packages_mb']:.1f} MB "
                  f"(torch absent: {inst['torch_absent']}, flwr absent: {inst['flwr_absent']}); "
                  f"its fedge-client --runtime numpy trained a har round over mTLS: exit {inst['round']['exit']}, "
                  f"ok {inst['round']['ok']}.", "", "Distributions: " + ", ".join(inst["distributions"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="alternating runs per runtime and task")
    parser.add_argument("--epochs", type=int, default=3, help="timed local epochs per run (after one warm-up)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="federation seeds (none: skip)")
    parser.add_argument("--rounds", type=int, default=10, help="federation rounds (one local epoch each)")
    parser.add_argument("--install", action="store_true", help="also measure a fresh fedge[device] venv (needs the index)")
    parser.add_argument("--install-only", action="store_true",
                        help="measure only the fresh device venv, keeping the other sections of bench/results/device.json")
    parser.add_argument("--device-python", default=None, metavar="PYTHON",
                        help=f"interpreter of the fresh device venv (default: a Python {OLDEST_PYTHON} if found, else this one)")
    parser.add_argument("--child", nargs=4, metavar=("TASK", "RUNTIME", "SHARD", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task_name, runtime, shard, epochs = args.child
        print(json.dumps(child(task_name, runtime, shard, int(epochs))))
        return 0
    work = Path(tempfile.mkdtemp(prefix="fedge-device-bench-"))
    report: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "reps": args.reps,
                    "epochs": args.epochs, "load_start": os.getloadavg()}
    sections = [] if args.install_only else [("speed", lambda: measure(args.reps, args.epochs, work))]
    if args.seeds and not args.install_only:
        sections.append(("federations", lambda: federations(args.seeds, args.rounds)))
    if args.install_only:  # keep the other sections of the last full run; this one's load apart
        report = {**json.loads((RESULTS / "device.json").read_text()), "install_load_start": os.getloadavg()}
    if args.install or args.install_only:
        python = args.device_python or oldest_supported_python()
        sections.append(("install", lambda: install(work, python)))
    try:
        for name, run in sections:  # written after each section: a long run keeps what it measured
            report[name] = run()
            report["install_load_end" if args.install_only else "load_end"] = os.getloadavg()
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "device.json").write_text(json.dumps(report, indent=2))
            (RESULTS / "device.md").write_text(markdown(report))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
