"""A user's own task, followed literally from README's "Your own task" (issue 17).

The task file and the commands are read from README.md's fenced blocks in that section,
so README and this test cannot drift apart. The task goes to a temporary folder that is
not on ``PYTHONPATH`` and the commands run there exactly as printed (no ``+``, no ``~``):
``backend=local`` with spawned worker processes and ``backend=grpc`` with one
``fedge-client`` process per device both have to import the file by its path.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.tasks.custom import custom_task, data_digest, load_task_class, module_name_for, task_reference
from fedge.tasks.registry import resolve_task

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECTION = "### Your own task"


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n### ", start + len(SECTION))
    return text[start:end]


def readme_task() -> str:
    block = re.search(r"```python\n(.*?)```", readme_section(), re.S)
    assert block is not None, f"no ```python block under {SECTION!r} in README.md"
    return block.group(1)


def readme_commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", readme_section(), re.S)
    assert block is not None, f"no ```bash block under {SECTION!r} in README.md"
    text = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    """A folder holding README's task file, as its first line names it."""
    source = readme_task()
    name = re.match(r"# (\w+\.py)", source)
    assert name is not None, "README's task block must start with '# <file>.py'"
    (tmp_path / name.group(1)).write_text(source)
    return tmp_path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def test_docs_template_is_the_task_readme_runs():
    """``docs/my_task.py``, the skeleton to copy, is README's task: the runs below run it."""
    assert (REPO / "docs" / "my_task.py").read_text() == readme_task()


def test_readme_commands_are_plain_overrides():
    commands = readme_commands()
    assert [argv[0] for argv in commands] == ["fedge-sim", "fedge-sim"]
    backends = set()
    for argv in commands:
        assert "task=custom" in argv
        assert not any(arg.startswith(("+", "~")) for arg in argv[1:]), argv
        backends |= {arg.split("=", 1)[1] for arg in argv if arg.startswith("backend=")}
        workers = [int(arg.split("=")[1]) for arg in argv if arg.startswith("backend.num_workers=")]
        if "backend=local" in argv:
            assert workers and workers[0] >= 1, "the local run must use worker processes"
    assert backends == {"local", "grpc"}


def test_readme_custom_task_runs_on_local_workers_and_grpc_devices(task_dir: Path):
    env = _env()
    assert str(task_dir) not in env.get("PYTHONPATH", "")
    runs = {}
    for argv in readme_commands():
        proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=task_dir, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        found = sorted(task_dir.glob("outputs/*/*/results.json"), key=lambda p: p.stat().st_mtime)
        assert found, proc.stdout[-2000:]
        results = json.loads(found[-1].read_text())
        runs[results["config"]["backend"]["name"]] = results
    assert set(runs) == {"local", "grpc"}
    for backend, results in runs.items():
        rounds = results["rounds"]
        assert all(r["failures"] == 0 for r in rounds[1:]), (backend, rounds)
        assert rounds[-1]["replies"] >= 3, backend
        # three balanced classes: chance is 1/3; the federated model must have learned
        assert rounds[-1]["accuracy"] > 0.6, (backend, [r["accuracy"] for r in rounds])
        assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] + 0.2, backend
        assert results["config"]["task"]["args"] == {"n": 2000}


def test_unseeded_load_is_refused_at_start_naming_the_task(task_dir: Path):
    source = readme_task()
    unseeded = source.replace("random_state=self.seed", "random_state=None")
    assert unseeded != source
    (task_dir / "shuffled_task.py").write_text(unseeded.replace("class MyTask", "class ShuffledTask"))
    proc = subprocess.run(
        [str(BIN / "fedge-sim"), "task=custom", "task.path=./shuffled_task.py", "rounds=1", "progress=false"],
        cwd=task_dir, capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ShuffledTask" in proc.stderr and "shuffled_task.py" in proc.stderr
    assert "deterministic" in proc.stderr and "Traceback" not in proc.stderr
    assert not (task_dir / "outputs").exists(), "a refused run leaves no output directory"


def test_unknown_task_argument_is_refused_naming_it(task_dir: Path):
    proc = subprocess.run(
        [str(BIN / "fedge-sim"), "task=custom", "task.path=./my_task.py", "task.args.size=5", "progress=false"],
        cwd=task_dir, capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert proc.returncode == 2
    assert "size" in proc.stderr and "MyTask" in proc.stderr and "['n', 'seed']" in proc.stderr


def test_file_task_pickles_by_path_and_resolves_for_devices(task_dir: Path):
    task = custom_task(str(task_dir / "my_task.py"), "", {"n": 300})
    reference = task_reference(task)
    assert reference == f"{(task_dir / 'my_task.py').resolve()}:MyTask"
    assert resolve_task(reference) is type(task)
    assert type(task).__module__ == module_name_for(task_dir / "my_task.py")
    # A fresh interpreter (a worker) unpickles the task without the file on its path.
    code = "import pickle, sys; t = pickle.loads(sys.stdin.buffer.read()); print(type(t).__name__, t.n, len(t.load().train))"
    proc = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(task), capture_output=True,
                          cwd=REPO, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().split() == ["MyTask", "300", "240"]


def test_task_class_errors_name_the_file(tmp_path: Path):
    (tmp_path / "two.py").write_text(
        "from fedge.tasks.digits import DigitsTask\nclass A(DigitsTask): pass\nclass B(DigitsTask): pass\n"
    )
    with pytest.raises(ValueError, match="2 FederatedTask subclasses.*A, B.*task.cls"):
        load_task_class(str(tmp_path / "two.py"))
    with pytest.raises(ValueError, match="no class 'C'"):
        load_task_class(str(tmp_path / "two.py"), "C")
    with pytest.raises(ValueError, match="does not exist"):
        load_task_class(str(tmp_path / "missing.py"), "A")


def test_worker_with_other_data_refuses(task_dir: Path):
    task = custom_task(str(task_dir / "my_task.py"), "MyTask", {"n": 300})
    parts = {node_id_of(0): np.arange(10)}
    good = ClientRecipe(task, parts, data_digest=data_digest(task.load()))
    assert good.client(node_id_of(0)) is not None
    bad = ClientRecipe(task, parts, data_digest="0" * 64)
    with pytest.raises(ValueError, match="MyTask.*deterministic"):
        bad.client(node_id_of(0))
