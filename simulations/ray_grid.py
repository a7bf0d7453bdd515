"""RayGrid: the same Grid over a pool of Ray actors (``backend=ray``), the scale-out path.

Each actor holds a :class:`~fedge.simulations.clients.ClientRecipe` and builds its
clients lazily, exactly as a :class:`~fedge.simulations.local_grid.LocalGrid` worker
does (same :func:`~fedge.simulations.worker.run_tasks`); clients are pinned to
actors (the ``k``-th node in id order lives on actor ``k % num_actors``), so the state
a client keeps across rounds stays on one actor for the whole run. Tasks and updates
cross as the same serialised protos a device would receive, so byte counts are real
and, with single-threaded torch in every actor, the final weights equal those of
``backend=local`` for the same seed.

``address`` chooses the Ray instance: ``None`` starts a private one on this machine
(loopback only, no dashboard, no usage reporting), ``"auto"`` or ``"ray://host:10001"``
joins an existing cluster (``ray.init(address=...)``). If Ray is already initialised
in this process (a notebook, a test fixture), the grid uses that instance and leaves it
running. Ray is the distributed engine here; fedge adds only the pinning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedge.server.grid import FedgeGrid
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.worker import run_tasks

log = logging.getLogger(__name__)

#: Environment of a private Ray instance's processes. Ray finds a node's IP by asking
#: the route to a public DNS server unless told it runs on one machine only; its
#: dashboard process probes cloud metadata endpoints (169.254.169.254,
#: metadata.google.internal) at start-up even with usage stats off, so its HTTP goes to
#: a closed loopback port (the discard port) and fails at once, while Ray's own traffic
#: to 127.0.0.1 bypasses that proxy.
_PRIVATE_INSTANCE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # no GPUs in the pool: leave CUDA_VISIBLE_DEVICES alone
    **{name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    **{name: "127.0.0.1,localhost,::1" for name in ("no_proxy", "NO_PROXY")},
}


class _ClientHost:
    """The body of one Ray actor: a recipe and the clients it has built."""

    def __init__(self, recipe: ClientRecipe, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.recipe = recipe

    def run(self, tasks: Sequence[tuple[int, bytes]]) -> list[bytes]:
        return run_tasks(self.recipe, tasks)


def start_ray(address: str | None, num_cpus: float | None = None) -> bool:
    """Initialise Ray unless it already is; return whether this call started it.

    ``address=None`` starts a private instance on this machine with ``num_cpus``
    logical CPUs that only uses loopback; any other address joins that cluster.
    Ray's start-up draws from Python's and numpy's global random generators; they are
    restored afterwards, so Flower's client sampling is the same as with ``local``.
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return False
    rng_state = random.getstate(), np.random.get_state()
    saved_env = {name: os.environ.get(name) for name in _PRIVATE_INSTANCE_ENV}
    try:
        kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
        if address is None:
            os.environ.update(_PRIVATE_INSTANCE_ENV)
            constants = sys.modules.get("ray._private.ray_constants")
            if constants is not None:  # imported earlier: the flag was read at import
                setattr(constants, "ENABLE_RAY_CLUSTER", False)  # a module looked up by name: no static type
            kwargs.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        import ray

        ray.init(address=address, **kwargs)
    finally:
        for name, value in saved_env.items():  # the driver keeps its own environment
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(rng_state[0])
        np.random.set_state(rng_state[1])
    return True


class RayGrid(FedgeGrid):
    """Grid whose EdgeClients live in ``num_actors`` pinned Ray actors.

    Parameters
    ----------
    recipe:
        Builds each node's EdgeClient (its partition of the task's data).
    num_actors:
        Actors in the pool (at most one per node).
    address:
        Ray cluster to join (``"auto"``, ``"ray://host:port"``); ``None`` starts a
        private loopback-only Ray instance sized to fit the pool.
    cpus_per_actor:
        Ray logical CPUs each actor reserves.
    threads_per_actor:
        torch intra-op threads in each actor.
    """

    def __init__(
        self,
        recipe: ClientRecipe,
        num_actors: int = 4,
        address: str | None = None,
        cpus_per_actor: float = 1.0,
        threads_per_actor: int = 1,
    ) -> None:
        super().__init__(list(recipe.partitions))
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {cpus_per_actor}")
        if importlib.util.find_spec("ray") is None:
            raise ImportError("backend=ray needs Ray: pip install 'fedge[ray]'")
        self.num_actors = min(num_actors, len(self._node_ids))
        self._owns_ray = start_ray(address, num_cpus=self.num_actors * cpus_per_actor)
        import ray

        available = ray.cluster_resources().get("CPU", 0.0)
        if available < self.num_actors * cpus_per_actor:
            self.close()
            raise ValueError(
                f"the Ray cluster has {available:g} CPUs; {self.num_actors} actors x "
                f"{cpus_per_actor:g} CPUs do not fit (lower backend.num_actors or backend.cpus_per_actor)"
            )
        actor_cls = ray.remote(num_cpus=cpus_per_actor, max_restarts=0)(_ClientHost)
        # Ray types `actor.run.remote` only for methods decorated with ray.method, which would
        # import the optional ray at module import: the handles are typed Any here.
        self._actors: list[Any] = [actor_cls.remote(recipe, threads_per_actor) for _ in range(self.num_actors)]
        self._actor_of = {n: i % self.num_actors for i, n in enumerate(self._node_ids)}

    def _deliver(self, tasks: Sequence[tuple[int, bytes]]) -> list[bytes | None]:
        import ray

        jobs: list[list[int]] = [[] for _ in self._actors]
        for position, (node_id, _) in enumerate(tasks):
            jobs[self._actor_of[node_id]].append(position)
        pending = [
            (positions, actor.run.remote([tasks[p] for p in positions]))
            for actor, positions in zip(self._actors, jobs)
            if positions
        ]
        answers: list[bytes | None] = [None] * len(tasks)
        for positions, ref in pending:
            try:
                results = ray.get(ref)
            except ray.exceptions.RayError as exc:  # a dead actor fails its clients, not the round
                log.error("Ray actor failed (%s); its %d clients count as failed", type(exc).__name__, len(positions))
                continue
            for p, result in zip(positions, results):
                answers[p] = result
        return answers

    def close(self) -> None:
        if "ray" not in sys.modules:
            return
        import ray

        for actor in getattr(self, "_actors", []):
            ray.kill(actor)
        self._actors = []
        if getattr(self, "_owns_ray", False):
            ray.shutdown()
            self._owns_ray = False

