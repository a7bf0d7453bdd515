"""One module, one name, and static tools resolve every name (issue 10, must-show 1).

The folders ``server/``, ``client/``, ... are the packages ``fedge.server``, ... through
the links in ``fedge/``; with the repository root on ``sys.path`` the same files are also
reachable as ``server``, ``client``, ... Each folder's ``__init__`` refuses that second
name (:mod:`fedge._one_name`). These tests check it for every module file, check that
importing every ``fedge.*`` module loads each file once, and check that mypy, run as a
user's project would run it (outside this checkout, on the installed package), finds
every ``fedge.*`` module. ``make test`` runs ``mypy -p fedge`` on the whole package
before pytest (the full check, ~1 min cold); the check here skips analysing the modules
(``--follow-imports=skip``) and only resolves them, so it takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folders() -> list[str]:
    """The folders that are ``fedge.<folder>`` (the links in ``fedge/``)."""
    return sorted(p.name for p in (ROOT / "fedge").iterdir() if p.is_symlink())


def bare_names() -> list[str]:
    """Dotted bare name (``server.grid``) of every module file in the package folders,
    generated protobuf code included."""
    out = []
    for folder in folders():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_package_folders_are_all_found():
    assert set(folders()) >= {"protos", "tasks", "client", "strategies", "conf", "server", "simulations", "deploy"}
    assert len(bare_names()) > 100


def test_no_module_file_imports_under_its_bare_folder_name():
    names = bare_names()
    probe = f"""
import importlib, json, sys
sys.path.insert(0, {str(ROOT)!r})
loaded, messages = [], set()
for name in {names!r}:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        messages.add(str(exc).split(":")[0])
    else:
        loaded.append(name)
print(json.dumps({{"loaded": loaded, "messages": sorted(messages)}}))
"""
    result = run_python(probe, cwd=Path("/"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["loaded"] == [], f"importable under a second name: {report['loaded']}"
    # each refusal is fedge's own, naming the package to use instead
    assert report["messages"] == sorted(f"the folder {f}/ is the package fedge.{f}" for f in folders())


def test_importing_every_fedge_module_loads_each_file_once():
    names = [f"fedge.{name}" for name in bare_names()]
    probe = f"""
import importlib, json, os, sys
sys.path.insert(0, {str(ROOT)!r})
for name in {names!r}:
    importlib.import_module(name)
files = {{}}
for name, module in list(sys.modules.items()):
    path = os.path.realpath(getattr(module, "__file__", None) or "/")
    if os.path.commonpath([path, {str(ROOT)!r}]) == {str(ROOT)!r} and "site-packages" not in path:
        files.setdefault(path, []).append(name)
print(json.dumps({{"twice": {{p: n for p, n in files.items() if len(n) > 1}},
                  "files": len(files)}}))
"""
    result = run_python(probe, cwd=Path("/"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["twice"] == {}, "files of this checkout loaded under two names"
    assert report["files"] >= len(names)


def mypy_on(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """mypy on one file outside the checkout: fedge is found as an installed package."""
    (tmp_path / "probe.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=skip", "--no-incremental", "--config-file", os.devnull, "probe.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mypy_resolves_every_fedge_module_as_an_installed_typed_package(tmp_path):
    source = "".join(f"import fedge.{name}\n" for name in bare_names())
    result = mypy_on(source, tmp_path)
    assert "import-not-found" not in result.stdout and "import-untyped" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_mypy_check_sees_a_missing_fedge_module(tmp_path):
    result = mypy_on("import fedge.server.no_such_module\n", tmp_path)
    assert result.returncode == 1
    assert '"fedge.server.no_such_module"  [import-not-found]' in result.stdout
