"""The fork server imports what ``__main__`` imported, so workers do not import it again.

CPython before 3.13.8 never preloads ``__main__`` in the fork server (gh-126631), and each
worker re-runs the program's ``__main__``: without :func:`main_imports` every worker
imported the program's modules itself, one after the other.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedge.simulations.fork_server import main_imports

pytestmark = pytest.mark.skipif("forkserver" not in mp.get_all_start_methods(), reason="no fork server on this platform")

HEAVY = """
import os
with open(os.environ["IMPORT_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")

def work(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\\n")
"""

PROGRAM = """
import os, sys
from heavy_dep import work
from fedge.simulations.fork_server import start_fork_server, worker_context

if __name__ == "__main__":
    start_fork_server(with_main={with_main})
    ctx = worker_context()
    procs = [ctx.Process(target=work, args=(os.environ["WORK_LOG"],)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode for p in procs))
"""


def importers_and_workers(tmp_path: Path, with_main: bool, as_module: bool) -> tuple[set[str], set[str]]:
    (tmp_path / "heavy_dep.py").write_text(HEAVY)
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM.format(with_main=with_main)))
    env = {"IMPORT_LOG": str(tmp_path / "imports.log"), "WORK_LOG": str(tmp_path / "work.log"),
           "PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-m", "prog"] if as_module else [sys.executable, str(tmp_path / "prog.py")]
    subprocess.run(args, cwd=tmp_path, env=env, check=True, timeout=120)
    return set((tmp_path / "imports.log").read_text().split()), set((tmp_path / "work.log").read_text().split())


@pytest.mark.parametrize("as_module", [False, True], ids=["script", "python -m"])
def test_workers_find_main_imports_imported(tmp_path: Path, as_module: bool) -> None:
    importers, workers = importers_and_workers(tmp_path, with_main=True, as_module=as_module)
    assert len(workers) == 2
    assert not importers & workers  # the fork server imported heavy_dep once; no worker did
    assert len(importers) == 2  # this program and the fork server


FRAGILE = """
import multiprocessing, os
if "FEDGE_FORK_SERVER_IMPORTS" in os.environ and multiprocessing.current_process().name == "MainProcess":
    raise RuntimeError("this module does not import in the fork server")  # (a worker's name is Process-N)
"""


def test_a_main_import_that_raises_there_does_not_end_the_fork_server(tmp_path: Path) -> None:
    """CPython's preload skips only ImportError; a program's module raising anything else in
    the fork server must cost only that import (the worker re-imports it and fails alike:
    here the worker's target does not need it, so it still runs)."""
    (tmp_path / "fragile_dep.py").write_text(FRAGILE)
    (tmp_path / "heavy_dep.py").write_text(HEAVY)
    program = PROGRAM.replace("from heavy_dep import work", "from heavy_dep import work\nimport fragile_dep")
    (tmp_path / "prog.py").write_text(textwrap.dedent(program.format(with_main=True)))
    env = {"IMPORT_LOG": str(tmp_path / "imports.log"), "WORK_LOG": str(tmp_path / "work.log"),
           "PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "prog"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (tmp_path / "work.log").exists(), proc.stderr
    assert len((tmp_path / "work.log").read_text().split()) == 2


def test_without_main_workers_import_it_themselves(tmp_path: Path) -> None:
    """The control: with ``with_main=False`` each worker re-runs ``__main__`` and its imports."""
    importers, workers = importers_and_workers(tmp_path, with_main=False, as_module=False)
    assert workers <= importers


def test_main_imports_names_modules_of_main_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def local() -> None:  # defined in __main__ itself: not an import
        pass

    local.__module__ = "__main__"
    main = types.ModuleType("__main__")
    main.__dict__.update({"np": __import__("numpy"), "Path": Path, "local": local, "n": 3, "len": len})
    main.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert main_imports() == ["numpy", "pathlib"]
    spec = types.SimpleNamespace(name="pkg.runner")
    main.__spec__ = spec  # type: ignore[assignment]
    assert main_imports() == ["numpy", "pathlib", "pkg.runner"]
