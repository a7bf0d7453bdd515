"""Device install footprint: a fresh venv with only ``fedge[client]``, then a real round.

    python -m bench.client_install [--keep]

Creates a virtual environment in a temporary directory, installs ``torch==2.13.0``
(the CPU build, as the Makefile does) and then this checkout with the ``client``
extra, lists the installed distributions (``pip list``), checks that flwr (and the
other server-side packages) are absent, measures the installed size, and runs that
venv's ``fedge-client`` against a fedge server (this process) over mTLS for one
round. Writes ``bench/results/client_install.json``. Takes minutes (pip), so it is
a benchmark, not a test; ``tests/test_client_without_flwr_grpc.py`` checks the
dependency closure and the flwr-free import path on every test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "client_install.json"
SERVER_ONLY = {"flwr", "flwr-datasets", "hydra-core", "omegaconf", "ray", "datasets", "scikit-learn", "rich"}


#: Run inside the new venv: installed bytes per distribution, and torch's dependency closure.
SIZES = """
import json, os, importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip vendors it
    from pip._vendor.packaging.requirements import Requirement
sizes = {}
for d in md.distributions():
    total = 0
    for f in d.files or []:
        try:
            total += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    sizes[d.metadata["Name"].lower()] = total
closure, todo = set(), ["torch"]
while todo:
    name = todo.pop()
    if name in closure:
        continue
    closure.add(name)
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name.lower())
print(json.dumps({"bytes": sizes, "torch_closure": sorted(closure & set(sizes))}))
"""


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the venv (its path is printed)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fedge-client-venv-"))
    venv = work / "venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    timings = {}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    timings["install_torch_s"] = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([*pip, f"{REPO}[client]"], check=True)
    timings["install_fedge_client_s"] = time.perf_counter() - start
    listed = json.loads(
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True).stdout
    )
    names = sorted(d["name"].lower() for d in listed)
    site = next((venv / "lib").glob("python*/site-packages"))
    total = tree_bytes(site)
    sizes = json.loads(
        subprocess.run([str(venv / "bin" / "python"), "-c", SIZES], check=True, capture_output=True, text=True).stdout
    )
    torch_bytes = sum(v for k, v in sizes["bytes"].items() if k in sizes["torch_closure"])
    round_report = run_one_round(venv, work)
    report = {
        "python": sys.version.split()[0],
        "distributions": names,
        "distribution_count": len(names),
        "server_only_present": sorted(set(names) & SERVER_ONLY),
        "flwr_absent": "flwr" not in names,
        "site_packages_bytes": total,
        "torch_bytes": torch_bytes,
        "without_torch_bytes": total - torch_bytes,
        "torch_and_its_dependencies": sorted(sizes["torch_closure"]),
        "bytes_by_distribution": dict(sorted(sizes["bytes"].items(), key=lambda kv: -kv[1])),
        **timings,
        "round": round_report,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "distributions"}, indent=2))
    if args.keep:
        print(f"venv kept at {venv}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["flwr_absent"] and round_report["exit"] == 0 else 1


def run_one_round(venv: Path, work: Path, task_name: str = "digits", client_args: tuple[str, ...] = ()) -> dict:
    """The fresh venv's fedge-client against a server in this process, one round, mTLS.

    ``task_name``: a registered task; ``client_args``: more fedge-client arguments
    (``("--runtime", "numpy")``).
    """
    from fedge.server.certs import CertDir, create_federation, issue_devices
    from fedge.conf.schema import ServerConfig
    from bench.probe import probe_device
    from fedge.server.transport import FederationServer, ServerCredentials
    from fedge.tasks.registry import resolve_task

    certs = CertDir(work / "certs")
    create_federation(certs.root)
    issue_devices(certs.root, ["pi-1"])
    task = resolve_task(task_name)()
    shard = task.load().train.subset(np.arange(200))
    data = work / "device.npz"
    np.savez(data, x=shard.x, y=shard.y)
    server = FederationServer(ServerConfig(address="127.0.0.1:0", round_timeout_s=120), ServerCredentials.from_dir(certs.root), ["fp32"]).start()
    command = [
        str(venv / "bin" / "fedge-client"), "--server", server.address, "--task", task_name, "--data", str(data),
        "--ca", str(certs.ca), "--cert", str(certs.device("pi-1")), "--key", str(certs.device_key("pi-1")), "--pull-wait", "2",
        *client_args,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": ""})
    try:
        probe = probe_device(server, task, join_timeout_s=120)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    return {
        "exit": proc.returncode,
        "ok": probe.ok,
        "num_examples": probe.reply.content["metrics"]["num-examples"] if probe.ok else None,
        "uplink_grpc_bytes": probe.wire.uplink_grpc_bytes,
        "downlink_grpc_bytes": probe.wire.downlink_grpc_bytes,
        "client_output_tail": out[-500:],
    }


if __name__ == "__main__":
    sys.exit(main())
