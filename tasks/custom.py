"""A user's own task, loaded from a Python file or a module path, in every process.

``fedge-sim task=custom task.path=./my_task.py task.cls=MyTask task.args.n=600`` builds
the task through :func:`custom_task` (the ``_target_`` of ``conf/task/custom.yaml``).
The file is imported by path (:func:`importlib.util.spec_from_file_location`) and
registered in ``sys.modules`` under a stable name derived from its absolute path
(:func:`module_name_for`), so nothing has to be on ``PYTHONPATH``.

Every other process that needs the task gets there by itself:

- **Worker processes and Ray actors** receive the task pickled. Pickle names a class by
  module, which another process cannot import for a file-loaded module, so the class
  is registered with :mod:`copyreg`: its instances pickle as "load this file, make an
  instance of this class, set this state" (:func:`restore_task`), which imports the
  file first in the receiving process.
- **gRPC device processes** (``fedge-client``) get ``--task /abs/path/my_task.py:MyTask``
  (:func:`task_reference`); :func:`fedge.tasks.registry.resolve_task` loads such a
  reference with :func:`load_task_class`.

:func:`data_digest` and :func:`check_deterministic` refuse a task whose ``load()``
returns different data on two calls: every worker calls ``load()`` again and indexes
its partition into the result, so a non-deterministic ``load()`` would silently hand
clients the wrong examples.

Written by hand: Hydra's ``_target_`` needs an importable module, and neither Hydra nor
pickle loads a module from a file path.
"""

from __future__ import annotations

import copyreg
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fedge.tasks.base import FederatedTask, TaskData

#: Prefix of the ``sys.modules`` names given to task files (then the file's stem and a hash).
MODULE_PREFIX = "fedge_user_task_"
#: What a ``path`` naming a file ends with.
FILE_SUFFIX = ".py"

#: Files loaded in this process: module name -> absolute path.
_FILES: dict[str, Path] = {}


def is_file_reference(path: str) -> bool:
    """Whether ``path`` names a Python file (``./my_task.py``) rather than a module (``mypkg.tasks``)."""
    return path.endswith(FILE_SUFFIX) or "/" in path or "\\" in path


def module_name_for(file: Path) -> str:
    """The stable ``sys.modules`` name of ``file``: the same in every process on this
    machine (a hash of its absolute path), a valid identifier, unlikely to clash."""
    resolved = file.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in resolved.stem)
    return f"{MODULE_PREFIX}{stem}_{digest}"


def load_file_module(file: str | Path) -> ModuleType:
    """Import the Python file ``file`` (once per process) under :func:`module_name_for`."""
    path = Path(file).expanduser().resolve()
    name = module_name_for(path)
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ValueError(f"task file {path} does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"task file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _FILES[name] = path
    return module


def load_task_class(path: str, cls: str = "") -> type[FederatedTask]:
    """The :class:`FederatedTask` subclass ``cls`` of ``path`` (a ``.py`` file or a module
    path). With ``cls`` empty, the one subclass the module defines. ``ValueError`` names
    the file and what is wrong."""
    if not path:
        raise ValueError("task.path is empty: give a Python file (./my_task.py) or a module (mypkg.tasks)")
    try:
        module = load_file_module(path) if is_file_reference(path) else importlib.import_module(path)
    except ImportError as exc:
        raise ValueError(f"task {path!r}: cannot import: {exc}") from None
    if cls:
        found = getattr(module, cls, None)
        if found is None:
            names = ", ".join(_task_classes(module)) or "none"
            raise ValueError(f"task {path!r} has no class {cls!r} (FederatedTask subclasses there: {names})")
    else:
        defined = _task_classes(module)
        if len(defined) != 1:
            raise ValueError(
                f"task {path!r} defines {len(defined)} FederatedTask subclasses ({', '.join(defined) or 'none'}); "
                f"name one with task.cls"
            )
        found = getattr(module, defined[0])
    if not (isinstance(found, type) and issubclass(found, FederatedTask)):
        raise ValueError(f"task {path}:{cls} is not a fedge.tasks.base.FederatedTask subclass")
    if module.__name__ in _FILES:
        copyreg.pickle(found, _reduce_file_task)  # instances travel to other processes by file path
    return found


def _task_classes(module: ModuleType) -> list[str]:
    """Names of the concrete FederatedTask subclasses defined in ``module`` itself."""
    return sorted(
        name for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, FederatedTask) and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    )


def custom_task(path: str, cls: str = "", args: Mapping[str, Any] | None = None) -> FederatedTask:
    """Build the user's task: class ``cls`` of ``path`` with constructor arguments ``args``
    (the ``_target_`` of ``conf/task/custom.yaml``)."""
    task_cls = load_task_class(path, cls)
    kwargs = dict(args or {})
    try:
        inspect.signature(task_cls).bind(**kwargs)
    except TypeError as exc:
        params = [n for n in inspect.signature(task_cls).parameters if n != "self"]
        raise ValueError(f"task.args for {task_cls.__name__} ({path}): {exc}; it takes {params}") from None
    return task_cls(**kwargs)


def task_reference(task: FederatedTask) -> str:
    """What names ``task``'s class in another process: ``/abs/path/file.py:Class`` for a
    file-loaded task, ``package.module:Class`` otherwise (``fedge-client --task``)."""
    cls = type(task)
    file = _FILES.get(cls.__module__)
    return f"{file}:{cls.__qualname__}" if file is not None else f"{cls.__module__}:{cls.__qualname__}"


def _reduce_file_task(task: FederatedTask) -> tuple[Any, ...]:
    """Pickle a file-loaded task as (load the file, a bare instance, its state)."""
    cls = type(task)
    getstate = getattr(task, "__getstate__", None)  # every object has one from Python 3.11 on
    state = getstate() if getstate is not None else dict(vars(task))
    return restore_task, (str(_FILES[cls.__module__]), cls.__qualname__), state


def restore_task(file: str, qualname: str) -> FederatedTask:
    """An uninitialised instance of ``qualname`` from ``file`` (pickle then sets its state)."""
    cls = load_task_class(file, qualname)
    return cls.__new__(cls)


# ---------------------------------------------------------------------- determinism


def data_digest(data: TaskData) -> str:
    """SHA-256 over every array of ``data`` (dtype, shape and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    arrays = [data.train.x, data.train.y, data.test.x, data.test.y]
    if data.groups is not None:
        arrays.append(data.groups)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def describe_task(task: FederatedTask) -> str:
    """``Class (where)`` for messages: the file of a file-loaded task, else its module."""
    cls = type(task)
    return f"{cls.__name__} ({_FILES.get(cls.__module__, cls.__module__)})"


def check_deterministic(task: FederatedTask, data: TaskData) -> str:
    """Load ``task`` again and raise ``ValueError`` naming it unless the data equal ``data``
    (the first ``load()``); returns the digest, which worker processes check again."""
    first = data_digest(data)
    if data_digest(task.load()) != first:
        raise ValueError(
            f"task {describe_task(task)}: load() returned different data on a second call. Every worker "
            f"calls load() again and takes its partition by index, so load() must be deterministic: "
            f"seed every shuffle or subsample (np.random.default_rng(seed), random_state=seed)"
        )
    return first
