"""``backend=grpc``: the deployment path on one machine.

The fedge-server logic (FederationServer + GrpcGrid) runs in the simulator's process
on a free loopback port; every simulated device is a real ``fedge-client`` process
with its own partition in an ``.npz`` file, its own certificate (``fedge-certs``
material made for the run: mTLS and signed tasks are on unless
``server.insecure=true``), talking real gRPC. Node ids, seeds and data equal the
local backend's, so both give the same federation up to floating-point order.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from fedge.conf.build import device_task, server_settings
from fedge.conf.schema import ServerConfig
from fedge.protos.codecs.compression_setup import required_codecs
from fedge.server.certs import CertDir, create_federation, issue_devices
from fedge.server.grpc_grid import GrpcGrid
from fedge.server.transport import FederationServer, ServerCredentials
from fedge.simulations.clients import ClientRecipe
from fedge.strategies import CompressedStrategy

log = logging.getLogger(__name__)

#: Seconds each device process gets to exit after the federation finished.
EXIT_WAIT_S = 30.0


class GrpcSimulation(GrpcGrid):
    """A GrpcGrid whose devices are fedge-client processes started (and stopped) here.

    Parameters
    ----------
    recipe:
        The task, each node's partition, the training defaults and the seed.
    settings:
        ``server.*`` settings; the address is replaced by ``127.0.0.1:<free port>``.
    target, task_options:
        ``fedge-client --task`` and its ``--task-option`` constructor arguments
        (:func:`fedge.conf.build.device_task`).
    codecs:
        Codec ids the federation uses (devices must support them to join).
    max_update_bytes:
        Largest accepted Update.
    threads:
        torch threads per device process.
    """

    def __init__(
        self,
        recipe: ClientRecipe,
        settings: ServerConfig,
        target: str,
        task_options: dict[str, object],
        codecs: list[str],
        max_update_bytes: int,
        threads: int = 1,
    ) -> None:
        settings.address = "127.0.0.1:0"
        settings.max_workers = max(settings.max_workers, 2 * len(recipe.partitions) + 4)
        self.work_dir = Path(tempfile.mkdtemp(prefix="fedge-grpc-"))
        node_ids = sorted(recipe.partitions)
        certs = CertDir(self.work_dir / "certs")
        credentials = None
        if not settings.insecure:
            create_federation(certs.root)
            issue_devices(certs.root, [str(n) for n in node_ids])
            credentials = ServerCredentials.from_dir(certs.root)
        server = FederationServer(settings, credentials, codecs, max_update_bytes).start()
        super().__init__(server)
        self.processes: dict[int, subprocess.Popen] = {}
        try:
            self._start_devices(recipe, node_ids, certs, target, task_options, threads)
            self.wait_for_nodes(len(node_ids))
        except BaseException:
            self.close()
            raise

    def _start_devices(
        self, recipe: ClientRecipe, node_ids: list[int], certs: CertDir, target: str, task_options: dict[str, object],
        threads: int,
    ) -> None:
        train = recipe.task.load().train
        for node_id in node_ids:
            part = train.subset(recipe.partitions[node_id])
            data = self.work_dir / f"{node_id}.npz"
            np.savez(data, x=part.x, y=part.y)
            command = [
                sys.executable, "-m", "fedge.client.client_cli",
                "--server", self.server.address, "--task", target, "--data", str(data),
                "--seed", str(recipe.seed), "--threads", str(threads), "--backoff-max", "2",
                "--pull-wait", str(min(self.settings.pull_wait_s, 10.0)), "--log-level", "WARNING",
            ]
            if recipe.memory_mb.get(node_id, 0.0) > 0:  # its device profile's budget
                command += ["--memory-mb", str(recipe.memory_mb[node_id])]
            for key, value in task_options.items():
                command += ["--task-option", f"{key}={value!r}"]
            if self.server.secure:
                device = str(node_id)
                command += ["--ca", str(certs.ca), "--cert", str(certs.device(device)), "--key", str(certs.device_key(device))]
            else:
                command += ["--insecure", "--device-id", str(node_id)]
            log_file = open(self.work_dir / f"{node_id}.log", "wb")
            self.processes[node_id] = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
            log_file.close()

    def close(self) -> None:
        super().close()
        for node_id, proc in self.processes.items():
            try:
                code = proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code not in (0, -9):
                tail = (self.work_dir / f"{node_id}.log").read_text(errors="replace")[-2000:]
                log.warning("device %d exited with status %s:\n%s", node_id, code, tail)
        self.processes = {}
        self.server.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)


def grpc_grid(cfg: DictConfig, recipe: ClientRecipe, strategy: CompressedStrategy) -> GrpcSimulation:
    """The ``backend=grpc`` grid for a composed fedge-sim config."""
    settings = server_settings(cfg)
    target, task_options = device_task(cfg, recipe.task)
    return GrpcSimulation(
        recipe,
        settings,
        target,
        task_options,
        required_codecs(strategy.uplink, strategy.downlink),
        strategy.max_update_bytes,
        cfg.backend.threads_per_worker,
    )
