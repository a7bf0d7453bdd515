"""A torch model's tensors as named numpy arrays, and back."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def model_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Copies of the model's state (parameters and buffers) as numpy arrays, by name."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load named arrays into the model (names and shapes must match exactly)."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
