"""fedge-client runs against a real server with flwr unimportable (issue 5, must-show 5).

The fresh-venv install (only the ``client`` extra, then ``pip list``) is measured by
``python -m bench.client_install`` (bench/results/client_install.json): it takes a
few minutes of pip, too slow for the test suite. Here: the declared dependency
closure of ``fedge[client]`` holds no flwr, and the real fedge-client process, with
flwr blocked at import, joins a server over mTLS, verifies, trains and pushes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
from grpc_helpers import make_certs, start_server
from packaging.requirements import Requirement

from bench.probe import probe_device
from fedge.tasks.digits import DigitsTask
from import_blocker import BLOCKER

SERVER_ONLY = {"flwr", "flwr-datasets", "hydra-core", "omegaconf", "ray", "datasets", "scikit-learn", "rich"}


def dependency_closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Installed distributions ``name[extras]`` needs, following requirements (markers evaluated)."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        try:
            dist = distribution(dist_name)
        except PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen and not dist_extras:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            environments = [{"extra": e} for e in dist_extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, tuple(req.extras)))
    return seen


def test_the_client_extra_installs_no_flwr():
    closure = dependency_closure("fedge", ("client",))
    assert {"numpy", "torch", "grpcio", "protobuf", "cryptography"} <= closure
    assert not closure & SERVER_ONLY, sorted(closure & SERVER_ONLY)
    assert "flwr" in dependency_closure("fedge", ("server",))  # the walk does see extras


def device_round_with_blocked_import(tmp_path, task, task_name: str, blocked: str, heavy: set[str],
                                     client_args: tuple[str, ...] = (), examples: int = 150):
    """A real fedge-client process, ``blocked`` unimportable in it, trains one round over mTLS.

    Returns the server's probe and the process's report ``{"exit": ..., "heavy": [...]}``
    (``heavy``: which of the named packages the device imported) and its stderr.
    """
    certs = make_certs(tmp_path / "certs")
    shard = task.load().train.subset(np.arange(examples))
    data = tmp_path / "device.npz"
    np.savez(data, x=shard.x, y=shard.y)
    server = start_server(certs)
    argv = [
        "fedge-client", "--server", server.address, "--task", task_name, "--data", str(data),
        "--ca", str(certs.ca), "--cert", str(certs.device("1000")), "--key", str(certs.device_key("1000")),
        "--pull-wait", "2", *client_args,
    ]
    script = BLOCKER.format(module=blocked) + textwrap.dedent(
        f"""
        import json, runpy
        sys.argv = {argv!r}
        try:
            runpy.run_module("fedge.client.client_cli", run_name="__main__")
        except SystemExit as exit:
            code = exit.code
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(heavy)!r}))
        print(json.dumps({{"exit": code, "heavy": heavy}}))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        probe = probe_device(server, task)
        out, err = proc.communicate(timeout=120)  # the federation is over: the device leaves and exits
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    return probe, json.loads(out.strip().splitlines()[-1]), err


def test_fedge_client_process_trains_against_a_server_with_flwr_blocked(tmp_path):
    heavy = {"flwr", "hydra", "omegaconf", "ray", "sklearn", "datasets"}
    probe, report, err = device_round_with_blocked_import(tmp_path, DigitsTask(), "digits", "flwr", heavy)
    assert probe.ok, probe.reply.error.reason
    assert probe.reply.content["metrics"]["num-examples"] == 150.0
    assert report == {"exit": 0, "heavy": []}, err[-2000:]
