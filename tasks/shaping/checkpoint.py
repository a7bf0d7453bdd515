"""Transfer: start a model from a saved one (a run's ``final_model.npz`` or any ``.npz`` of
state names -> arrays).

Tensors whose name and shape match the model's are copied; the rest keep their fresh
initialisation: with a different number of classes that is the new head. What was copied
is the *backbone* (freeze it with ``client.trainable`` = the fresh names; see
:func:`fedge.conf.shaping.shape_experiment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


def load_checkpoint(path: str | Path, key: str = "shape.init.path") -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``; ``ValueError`` naming ``key`` if it cannot be read."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{key}={str(path)!r}: no such file")
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{key}={str(path)!r} is not an .npz of arrays: {exc}") from None


@dataclass(frozen=True)
class Transfer:
    """What :func:`transfer` did: state names copied from the checkpoint and kept fresh."""

    copied: list[str]
    fresh: list[str]


def transfer(model: nn.Module, start: Mapping[str, np.ndarray], key: str = "shape.init.path") -> Transfer:
    """Copy every tensor of ``start`` whose name and shape fit ``model`` into it, in place.

    Raises ``ValueError`` naming ``key`` when nothing fits (another architecture).
    """
    state = model.state_dict()
    copied = [n for n, t in state.items() if n in start and tuple(start[n].shape) == tuple(t.shape)]
    if not copied:
        raise ValueError(f"{key}: no tensor of the checkpoint fits the model (names or shapes differ)")
    with torch.no_grad():
        for name in copied:
            state[name].copy_(torch.from_numpy(np.array(start[name], dtype=np.float32 if state[name].is_floating_point() else None)))
    return Transfer(copied, [n for n in state if n not in copied])
