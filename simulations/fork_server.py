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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: What every worker imports: torch and the worker's own modules. Not ``torch._dynamo``
#: (1-2.5 s): training steps with :class:`fedge.client.sgd.SGD`, which does not import it,
#: as ``torch.optim`` does.
WORKER_MODULES = ("torch", "fedge.simulations.worker", "fedge.client.torch_trainer")


def worker_context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    """The start method of worker processes: the fork server where there is one, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def start_fork_server(modules: Iterable[str] = (), with_main: bool = True) -> None:
    """Start the fork server now (it imports :data:`WORKER_MODULES` and ``modules``, e.g.
    the task's module, in the background); no-op where there is none or once it runs.
    A module that fails to import is skipped (the worker imports it itself).

    ``with_main``: also run this program's ``__main__`` there first, as spawn would (a
    script whose own functions or classes travel to the workers needs it). ``fedge-sim``
    passes false: its ``__main__`` is the console script, whose import of the CLI would
    cost the fork server Hydra's and OmegaConf's imports (~0.35 s of CPU) before torch's."""
    if worker_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    mp.set_forkserver_preload([*(["__main__"] if with_main else []), *WORKER_MODULES, *modules])
    forkserver.ensure_running()


def start_for(cfg: DictConfig, with_main: bool = True) -> None:
    """Start the fork server if experiment ``cfg`` runs ``backend=local`` with worker
    processes, preloading its task's module (``fedge.tasks.digits.DigitsTask`` ->
    ``fedge.tasks.digits``); ``with_main``: see :func:`start_fork_server`."""
    if cfg.backend.name == "local" and cfg.backend.num_workers > 0:
        start_fork_server([str(cfg.task._target_).rpartition(".")[0]], with_main)
