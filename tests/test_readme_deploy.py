"""The README's "Deploying the model" commands run as printed (must-show 4 of issue 10).

The commands are read from README.md's fenced block in that section, so the README and
this test cannot drift apart. ``fedge-sim`` gets overrides appended for speed (later
overrides win in Hydra); ``fedge-export`` runs exactly as printed. ``pip install`` is
not run (no network in tests): its extra must be the one that provides what
``fedge-export`` imports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECTION = "### Deploying the model"
#: Appended to the README's fedge-sim command: fewer rounds and local steps, in-process clients.
SPEED = ["rounds=2", "client.local_steps=25", "backend.num_workers=0", "progress=false"]


def readme_commands() -> list[list[str]]:
    """The commands of the section's first fenced bash block, split like a shell, comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, f"no ```bash block under {SECTION!r} in README.md"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def test_readme_names_the_three_steps():
    programs = [argv[0] for argv in readme_commands()]
    assert programs == ["pip", "fedge-sim", "fedge-export"], programs


def test_readme_pip_extra_provides_the_exporter():
    (pip,) = [argv for argv in readme_commands() if argv[0] == "pip"]
    assert pip[:2] == ["pip", "install"]
    extra = re.fullmatch(r"fedge\[(\w+)\]", pip[2])
    assert extra, pip
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra.group(1)]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"onnx", "onnxruntime"} <= names, names


def test_readme_deploy_commands_run_end_to_end(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    exports = []
    for argv in readme_commands():
        if argv[0] == "pip":
            continue
        args = [str(BIN / argv[0]), *argv[1:], *(SPEED if argv[0] == "fedge-sim" else [])]
        proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        if argv[0] == "fedge-export":
            exports.append(tmp_path / argv[1] / "export")
    (out,) = exports
    for name in ("model_fp32.onnx", "model_int8.onnx", "export.json"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "export.json").read_text())
    assert report["int8_method"].startswith("qat")  # built from the learned LSQ steps
    steps = json.loads((out.parent / "results.json").read_text())["qat"]["steps"]
    assert steps and all(s > 0 for s in steps.values())
