"""Task names a device can ask for (``fedge-client --task digits``), without flwr.

A name maps to ``"module:Class"`` and is imported only when asked for, so listing
tasks imports nothing heavy. The registry is open: :func:`register_task` adds a name,
an installed package can add names through the ``fedge.tasks`` entry-point group, and
any ``"package.module:Class"`` or ``"package.module.Class"`` path (a Hydra
``_target_``) is accepted as it is, and so is a Python file, ``"/path/my_task.py:MyTask"``
(loaded by path, :mod:`fedge.tasks.custom`; nothing on ``PYTHONPATH`` needed).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from fedge.tasks.base import FederatedTask
from fedge.tasks.custom import is_file_reference, load_task_class

ENTRY_POINT_GROUP = "fedge.tasks"

_TASKS: dict[str, str] = {
    "digits": "fedge.tasks.digits:DigitsTask",
    "image": "fedge.tasks.image:ImageTask",
    "har": "fedge.tasks.har:HarTask",
}


def register_task(name: str, target: str) -> None:
    """Make ``name`` resolve to ``target`` (``"package.module:Class"``)."""
    if ":" not in target:
        raise ValueError(f"task target {target!r} must look like 'package.module:Class'")
    _TASKS[name] = target


def task_names() -> list[str]:
    """Registered names, including those from installed entry points."""
    return sorted(set(_TASKS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve_task(name: str) -> type[FederatedTask]:
    """The FederatedTask class that ``name`` (a registered name or a path) stands for."""
    target = _TASKS.get(name)
    if target is None:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        target = found[0].value if found else name
    if ":" in target and is_file_reference(target.rpartition(":")[0]):
        file, _, attr = target.rpartition(":")
        try:
            return load_task_class(file, attr)
        except (ValueError, ImportError, SyntaxError) as exc:
            raise ValueError(f"task {name!r}: {exc}") from None
    if ":" in target:
        module_name, _, attr = target.partition(":")
    elif "." in target:
        module_name, _, attr = target.rpartition(".")
    else:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(task_names())} (or give 'package.module:Class' or 'path/to/file.py:Class')")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task {name!r}: cannot import {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, FederatedTask)):
        raise ValueError(f"task {name!r}: {target!r} is not a fedge.tasks.FederatedTask subclass")
    return cls
