"""One module, one name: refuse to load a fedge folder under its bare folder name.

The repository's top-level folders (``server/``, ``client/``, ...) are the packages
``fedge.server``, ``fedge.client``, ... through the links in ``fedge/``. When the
repository root is on ``sys.path`` (an editable install, ``python`` started in the
checkout) the same files are also reachable as ``server``, ``client``, ...; loading them
twice would give two copies of every class and registry. Each folder's ``__init__``
calls :func:`require_fedge_name`, so the second name fails at once with a clear message.
"""

from __future__ import annotations


def require_fedge_name(module_name: str, folder: str) -> None:
    """Raise ImportError unless ``module_name`` is ``fedge.<folder>``."""
    expected = f"fedge.{folder}"
    if module_name != expected:
        raise ImportError(f"the folder {folder}/ is the package {expected}: import {expected}, not {module_name}")
