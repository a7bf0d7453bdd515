"""Every ``fedge-sim`` command in the README composes and passes the checks
``fedge-sim`` runs before it writes anything (the same ``check`` as the CLI's), so a
renamed key, group or option cannot leave a README command that fails as written.

A multirun's comma lists (``-m a=x,y``) are checked value by value. Commands that name a
file (``task.path=./my_task.py``, ``device.trace=fleet.csv``) run in a folder holding the
file the README describes (``docs/my_task.py``; a trace written as the README's trace
section states its columns).
"""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from omegaconf import DictConfig

from fedge.search.budget import device_budget
from fedge.search.settings import load_settings
from fedge.simulations.sim_app import check

REPO = Path(__file__).resolve().parents[1]
SHELL = ("", "bash", "sh", "shell", "console")


def shell_blocks(text: str) -> Iterator[str]:
    """The bodies of ``text``'s fenced shell code blocks (other languages' blocks are skipped)."""
    language: str | None = None  # the open block's language; None outside a block
    body: list[str] = []
    for line in text.splitlines():
        if not line.startswith("```"):
            body.append(line)
        elif language is None:
            language, body = line[3:].strip(), []
        else:
            if language in SHELL:
                yield "\n".join(body)
            language = None


def readme_commands(program: str = "fedge-sim") -> list[str]:
    """The README's ``program`` commands: its shell blocks' lines (continuations joined,
    comments dropped) and its inline ones (`` `fedge-sim secagg=on` ``)."""
    text = (REPO / "README.md").read_text()
    commands = sorted(set(re.findall(rf"`({program} [^`]*)`", text)))
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith(f"{program} "):
                commands.append(" ".join(shlex.split(line, comments=True)))
    return commands


def variants(command: str) -> Iterator[list[str]]:
    """The override lists a command runs: one, or one per value of a multirun's comma lists."""
    words = shlex.split(command)[1:]
    if any(w in ("--help", "-h", "--cfg", "--info") or w.startswith("--cfg") for w in words):
        return
    multirun = "-m" in words or "--multirun" in words
    overrides = [w for w in words if w not in ("-m", "--multirun")]
    if not multirun:
        yield overrides
        return
    choices = [[f"{w.split('=', 1)[0]}={v}" for v in w.split("=", 1)[1].split(",")]
               if "=" in w and "," in w and not w.split("=", 1)[1].startswith("[") else [w] for w in overrides]
    yield from (list(c) for c in itertools.product(*choices))


COMMANDS = readme_commands()


def test_the_readme_has_fedge_sim_commands() -> None:
    assert len(COMMANDS) >= 20


@pytest.fixture
def in_readme_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(REPO / "docs" / "my_task.py", tmp_path / "my_task.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes_and_passes_the_checks(
    command: str, make_cfg: Callable[[Sequence[str]], DictConfig], in_readme_folder: Path
) -> None:
    for overrides in variants(command):
        check(make_cfg(overrides))


SEARCH_COMMANDS = readme_commands("fedge-search")


@pytest.mark.parametrize("command", SEARCH_COMMANDS)
def test_readme_search_command_loads_its_settings(command: str) -> None:
    """``fedge-search CONFIG key=value ...``: the config exists and the overrides pass the
    checks ``fedge-search`` runs before its first trial."""
    words = [w for w in shlex.split(command)[1:] if w not in ("--help", "-h")]
    if words:
        config, overrides = (("har_wearable", words) if "=" in words[0] else (words[0], words[1:]))
        settings = load_settings(config, overrides)
        device_budget(settings.profile, settings.budget)  # budget.* keys are checked here, as fedge-search does


def test_the_readme_has_fedge_search_commands() -> None:
    assert len(SEARCH_COMMANDS) >= 2
