"""What simulated clients keep in memory, counted: numpy and torch buffers reachable from them.

Each buffer is counted once however many clients reach it (a runtime shared by every
client of a process counts once), views count their base, a tensor's gradient counts
too; what every client shares by construction (the task, its defaults) and the client's
own examples (``data``) are left out. Used by ``tests/test_scale_state.py`` and
:mod:`bench.scale`.

Written by hand: ``tracemalloc`` sees numpy's allocations but not torch's, and
``sys.getsizeof`` does not follow references.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

#: Client attributes that are not client state.
NOT_STATE = ("task", "data", "defaults")


def _buffers(root: Any, seen: set[int], found: dict[tuple[str, int], int]) -> None:
    if id(root) in seen:
        return
    seen.add(id(root))
    if isinstance(root, np.ndarray):
        base = root
        while isinstance(base.base, np.ndarray):
            base = base.base
        found[("numpy", id(base))] = base.nbytes
    elif isinstance(root, torch.Tensor):
        storage = root.untyped_storage()
        found[("torch", storage.data_ptr())] = storage.nbytes()
        if root.grad is not None:
            _buffers(root.grad, seen, found)
    elif isinstance(root, torch.nn.Module):
        for tensor in root.state_dict(keep_vars=True).values():
            _buffers(tensor, seen, found)
    elif isinstance(root, dict):
        for value in root.values():
            _buffers(value, seen, found)
    elif isinstance(root, (list, tuple, set, frozenset)):
        for value in root:
            _buffers(value, seen, found)
    elif hasattr(root, "__dict__") and not isinstance(root, type):
        for value in vars(root).values():
            _buffers(value, seen, found)


def state_bytes(clients: Iterable[Any]) -> int:
    """Bytes of the distinct buffers the ``clients`` (EdgeClients) keep, data excluded."""
    seen: set[int] = set()
    found: dict[tuple[str, int], int] = {}
    for client in clients:
        for key, value in vars(client).items():
            if key not in NOT_STATE:
                _buffers(value, seen, found)
    return sum(found.values())
