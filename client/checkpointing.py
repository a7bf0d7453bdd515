"""Gradient checkpointing of a model's sequential segments (``torch.utils.checkpoint``).

With ``client.checkpointing=true`` the model's forward pass goes through
``checkpoint_sequential`` in ``checkpoint_segments`` pieces: only each piece's input
is kept for backward and the piece's activations are recomputed then, trading one
extra forward pass for activation memory. The model must be an ``nn.Sequential``
(``edge_mobilenet`` is one, segment by segment).

``use_reentrant=True``: the recomputation runs inside ``backward`` under the caller's
``saved_tensors_hooks``, so :class:`~fedge.client.memory.ActivationMeter` counts the
recomputed activations too (the non-reentrant variant installs its own hooks, which
would hide them). The reentrant variant needs an input that requires grad, so the
batch is marked as one (its gradient is discarded).

With QAT (:class:`fedge.client.qat.LSQModel`) the segments are the LSQ model's
fake-quantised pieces: each quantises its weights and inputs again when recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

if TYPE_CHECKING:
    from fedge.client.qat import LSQModel

Forward = Callable[[torch.Tensor], torch.Tensor]


def training_forward(model: nn.Module, checkpointing: bool, segments: int, qat: LSQModel | None = None) -> Forward:
    """The forward pass to train ``model`` with: plain, or checkpointed in ``segments`` pieces.

    With ``qat`` (a fake-quantised view of ``model``), through it.
    """
    if not checkpointing:
        return model if qat is None else qat
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"client.checkpointing needs an nn.Sequential model of segments; {type(model).__name__} is not "
            "(use task.model=mobilenet)"
        )
    if not 1 <= segments <= len(model):
        raise ValueError(f"client.checkpoint_segments must be in [1, {len(model)}] for this model, got {segments}")

    pieces = model if qat is None else qat.pieces()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return checkpoint_sequential(pieces, segments, x.requires_grad_(True), use_reentrant=True)

    return forward
