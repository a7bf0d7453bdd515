"""Imported by the workers' fork server only (:mod:`fedge.simulations.fork_server`): imports
the modules named in the environment variable ``MAIN_IMPORTS_ENV`` (comma-separated), each
on its own, and skips any whose import raises.

CPython's own preload skips a module only on ``ImportError``; any other exception ends
the fork server, and with it every worker's start. The names come from
:func:`~fedge.simulations.fork_server.main_imports`, modules the program itself imported,
so one that fails here costs only a worker's own import of it, never the run. Written by
hand because :mod:`multiprocessing` has no such option before CPython 3.15's
``on_error=`` (gh-141860).
"""

from __future__ import annotations

import importlib
import os

from fedge.simulations.fork_server import MAIN_IMPORTS_ENV

for _name in filter(None, os.environ.get(MAIN_IMPORTS_ENV, "").split(",")):
    try:
        importlib.import_module(_name)
    except (Exception, SystemExit):  # noqa: BLE001 - any failure: the worker imports it itself
        pass
