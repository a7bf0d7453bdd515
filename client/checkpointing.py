"""Gradient checkpointing of a model's sequential segments (``torch.utils.checkpoint``).

With ``client.checkpointing=true`` the model's forward pass goes through
``checkpoint_sequential`` in ``checkpoint_segments`` pieces: only each piece's input
is kept for backward and the piece's activations are recomputed then, trading one
extra forward pass for activation memory. The model must be an ``nn.Sequential``
(``EdgeMobileNet`` is one, segment by segment).

``use_reentrant=True``: the recomputation runs inside ``backward`` under the caller's
``saved_tensors_hooks``, so :class:`~fedge.client.memory.ActivationMeter` counts the
recomputed activations too (the non-reentrant variant installs its own hooks, which
would hide them). The reentrant variant needs an input that requires grad, so the
batch is marked as one (its gradient is discarded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

Forward = Callable[[torch.Tensor], torch.Tensor]


def training_forward(model: nn.Module, checkpointing: bool, segments: int) -> Forward:
    """The forward pass to train ``model`` with: plain, or checkpointed in ``segments`` pieces."""
    if not checkpointing:
        return model
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"client.checkpointing needs an nn.Sequential model of segments; {type(model).__name__} is not "
            "(use task.model=mobilenet)"
        )
    if not 1 <= segments <= len(model):
        raise ValueError(f"client.checkpoint_segments must be in [1, {len(model)}] for this model, got {segments}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return checkpoint_sequential(model, segments, x.requires_grad_(True), use_reentrant=True)

    return forward
