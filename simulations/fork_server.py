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
nothing beyond the standard library (:mod:`multiprocessing`, :mod:`os`, :mod:`sys`) for
that reason.

A program's ``__main__`` (a script, or ``python -m pkg.mod``) runs again in every worker,
as spawn runs it, so that its functions and classes can travel to the workers. CPython's
``set_forkserver_preload(["__main__"])`` was meant to run it once in the fork server
instead, but before 3.13.8 it never does (the fork server reads a key that
``spawn.get_preparation_data`` stopped writing in 2013: CPython gh-126631), so each worker
re-ran the whole program's imports one after the other (~2 s each for a bench importing
Flower). :func:`main_imports` names what ``__main__`` imported, and the fork server imports
those too (each guarded: :mod:`fedge.simulations.fork_server_imports`): a worker's re-run of
``__main__`` then finds them imported.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: What every worker imports: torch and the worker's own modules. Not ``torch._dynamo``
#: (1-2.5 s): training steps with :class:`fedge.client.sgd.SGD`, which does not import it,
#: as ``torch.optim`` does.
WORKER_MODULES = ("torch", "fedge.simulations.worker", "fedge.client.torch_trainer")
#: The fork server's guarded import of :func:`main_imports` (imported there only).
MAIN_IMPORTS_MODULE = "fedge.simulations.fork_server_imports"
#: The environment variable that hands it the names (comma-separated), for the fork server's start.
MAIN_IMPORTS_ENV = "FEDGE_FORK_SERVER_IMPORTS"


def worker_context() -> mp.context.ForkServerContext | mp.context.SpawnContext:
    """The start method of worker processes: the fork server where there is one, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def main_imports() -> list[str]:
    """The modules this program's ``__main__`` imported, for the fork server to import
    before any worker re-runs ``__main__`` (see the module docstring): ``pkg.mod`` itself
    under ``python -m pkg.mod`` (its ``if __name__ == "__main__"`` block does not run), and
    the module of every module, class and function in ``__main__``'s namespace. Builtins
    and ``__main__``'s own definitions are left out; the names are sorted."""
    main = sys.modules.get("__main__")
    if main is None:
        return []
    names: set[str] = set()
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(spec_name, str) and not spec_name.endswith("__main__"):
        names.add(spec_name)
    for value in list(vars(main).values()):
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if isinstance(name, str) and name not in ("__main__", "__mp_main__", "builtins"):
            names.add(name)
    return sorted(names)


def start_fork_server(modules: Iterable[str] = (), with_main: bool = True) -> None:
    """Start the fork server now (it imports :data:`WORKER_MODULES` and ``modules``, e.g.
    the task's module, in the background); no-op where there is none or once it runs.
    A module that fails to import is skipped (the worker imports it itself).

    ``with_main``: also import this program's ``__main__`` there first (on CPython before
    3.13.8, what it imported: :func:`main_imports`), so that the workers' re-run of it is
    cheap. ``fedge-sim`` passes false: its ``__main__`` is the console script, whose import
    of the CLI would cost the fork server Hydra's and OmegaConf's imports (~0.35 s of CPU)
    before torch's."""
    if worker_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    if with_main:  # guarded: a module of the program's that fails there must not end the fork server
        os.environ[MAIN_IMPORTS_ENV] = ",".join(main_imports())
    main = ["__main__", MAIN_IMPORTS_MODULE] if with_main else []
    try:
        mp.set_forkserver_preload([*main, *WORKER_MODULES, *modules])
        forkserver.ensure_running()
    finally:
        os.environ.pop(MAIN_IMPORTS_ENV, None)  # the fork server was started with it; this process's other children need not


def start_for(cfg: DictConfig, with_main: bool = True) -> None:
    """Start the fork server if experiment ``cfg`` runs ``backend=local`` with worker
    processes, preloading its task's module (``fedge.tasks.digits.DigitsTask`` ->
    ``fedge.tasks.digits``); ``with_main``: see :func:`start_fork_server`."""
    if cfg.backend.name == "local" and cfg.backend.num_workers > 0:
        start_fork_server([str(cfg.task._target_).rpartition(".")[0]], with_main)
