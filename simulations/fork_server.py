"""The fork server ``backend=local`` workers are forked from, started as early as a run can.

Workers are forked by :mod:`multiprocessing`'s fork server where the platform has one
(else spawned): the fork server imports what every worker needs (:data:`WORKER_MODULES`:
torch, the worker's modules, and the task's module) once, so each worker starts with them
imported instead of importing them again. (Forking the server process itself is unsafe
once torch's threads run.)

Its imports take about as long as the server process's own (``import torch`` is most of
both), so :func:`start_fork_server` is called before the server process imports torch:
``fedge-sim`` calls it as soon as its configuration is composed, before importing the
experiment; the two processes then import side by side, on two cores. This module imports
nothing beyond :mod:`multiprocessing` for that reason.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable

#: What every worker imports: torch and the worker's own modules; ``__main__`` as spawn
#: would. Not ``torch._dynamo`` (1-2.5 s): training steps with :class:`fedge.client.sgd.SGD`,
#: which does not import it, as ``torch.optim`` does.
WORKER_MODULES = ("__main__", "torch", "fedge.simulations.worker", "fedge.client.torch_trainer")


def worker_context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    """The start method of worker processes: the fork server where there is one, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def start_fork_server(modules: Iterable[str] = ()) -> None:
    """Start the fork server now (it imports :data:`WORKER_MODULES` and ``modules``, e.g.
    the task's module, in the background); no-op where there is none or once it runs.
    A module that fails to import is skipped (the worker imports it itself)."""
    if worker_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    mp.set_forkserver_preload([*WORKER_MODULES, *modules])
    forkserver.ensure_running()


def task_module(task_target: str) -> str:
    """The module of a task's Hydra ``_target_`` (``fedge.tasks.digits.DigitsTask`` ->
    ``fedge.tasks.digits``), for the fork server to import."""
    return task_target.rpartition(".")[0]
