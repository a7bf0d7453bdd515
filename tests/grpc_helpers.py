"""Shared pieces of the gRPC tests: certificates, an in-process server, device threads."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import numpy as np

from fedge.client.connection import DeviceCredentials
from fedge.client.runtime import DeviceRuntime, RuntimeSettings
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.conf.schema import ServerConfig
from fedge.server.transport import FederationServer, ServerCredentials
from fedge.tasks.base import FederatedTask, Split

DEVICES = ["1000", "1001", "1002"]
#: Quick settings for loopback tests (seconds).
FAST_SERVER = ServerConfig(address="127.0.0.1:0", heartbeat_s=1.0, round_timeout_s=60.0, pull_wait_s=5.0, max_workers=16)


def make_certs(root: Path) -> CertDir:
    create_federation(root)
    issue_devices(root, DEVICES)
    return CertDir(root)


def start_server(certs: CertDir | None, codecs=("fp32",), credentials: ServerCredentials | None = None, **changes) -> FederationServer:
    settings = replace(FAST_SERVER, insecure=certs is None, **changes)
    if credentials is None and certs is not None:
        credentials = ServerCredentials.from_dir(certs.root)
    return FederationServer(settings, credentials, list(codecs)).start()


def device_credentials(certs: CertDir, device: str) -> DeviceCredentials:
    return DeviceCredentials.from_files(certs.ca, certs.device(device), certs.device_key(device))


def start_device(
    server: FederationServer, certs: CertDir | None, device: str, task: FederatedTask, data: Split, **changes
) -> tuple[DeviceRuntime, threading.Thread, list[int]]:
    """A DeviceRuntime in a thread; the list receives its exit status."""
    settings = RuntimeSettings(
        server=server.address,
        device_id=device,
        credentials=device_credentials(certs, device) if certs is not None else None,
        pull_wait_s=2.0,
        backoff_base_s=0.1,
        backoff_max_s=0.5,
        **changes,
    )
    runtime = DeviceRuntime(task, data, settings)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(runtime.run()), daemon=True)
    thread.start()
    return runtime, thread, status


def split_evenly(data: Split, parts: int) -> list[Split]:
    return [data.subset(idx) for idx in np.array_split(np.arange(len(data)), parts)]


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 20 ms; AssertionError after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


BIN = Path(sys.executable).parent


def fedge_server_args(port: int, certs: CertDir, checkpoint_dir: Path, *extra: str) -> list[str]:
    """``fedge-server`` on 127.0.0.1:``port`` with mTLS, quick heartbeats, 3 devices."""
    return [
        str(BIN / "fedge-server"), f"server.address=127.0.0.1:{port}", f"server.certs={certs.root}",
        f"server.checkpoint_dir={checkpoint_dir}", "server.heartbeat_s=1", "server.join_timeout_s=120",
        "server.round_timeout_s=60", "num_clients=3", "progress=false", *extra,
    ]


def fedge_client_args(port: int, certs: CertDir, device: str, data: Path, *extra: str) -> list[str]:
    """``fedge-client`` for ``device`` (its certificate) with quick reconnects."""
    return [
        str(BIN / "fedge-client"), "--server", f"127.0.0.1:{port}", "--task", "digits", "--data", str(data),
        "--ca", str(certs.ca), "--cert", str(certs.device(device)), "--key", str(certs.device_key(device)),
        "--backoff-max", "1", "--pull-wait", "5", *extra,
    ]


def digits_shard_file(path: Path, data: Split, index: int, parts: int) -> Path:
    """Every ``parts``-th example from ``index`` as an .npz of flat rows (the client reshapes)."""
    shard = data.subset(np.arange(index, len(data), parts))
    np.savez(path, x=shard.x.reshape(len(shard), -1), y=shard.y)
    return path


class Processes:
    """Processes started with their output in ``root/<name>.log``; :meth:`close` kills what still runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._logs: dict[str, IO[bytes]] = {}
        self._procs: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        self._logs[name] = open(self.root / f"{name}.log", "wb")
        proc = subprocess.Popen(args, stdout=self._logs[name], stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in self._logs.values():
            f.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_digits_federation(root: Path, devices: Sequence[str], *server_overrides: str) -> Processes:
    """A whole ``fedge-server`` run with one ``fedge-client`` process per device (mTLS on
    loopback, digits split evenly, results in ``root/run``); both sides must exit 0. The
    returned :class:`Processes` (closed) keeps every process's log."""
    certs = CertDir(root / "certs")
    create_federation(certs.root)
    issue_devices(certs.root, list(devices))
    from fedge.tasks.digits import DigitsTask

    train = DigitsTask().load().train
    port = free_port()
    procs = Processes(root)
    args = fedge_server_args(port, certs, root / "ckpt", *server_overrides, f"hydra.run.dir={root}/run")
    server = procs.start("server", [f"num_clients={len(devices)}" if a == "num_clients=3" else a for a in args])
    clients = [
        procs.start(d, fedge_client_args(port, certs, d, digits_shard_file(root / f"{d}.npz", train, i, len(devices))))
        for i, d in enumerate(devices)
    ]
    try:
        assert server.wait(timeout=300) == 0, procs.log("server")[-3000:]
        assert [c.wait(timeout=60) for c in clients] == [0] * len(devices)
    finally:
        procs.close()
    return procs

