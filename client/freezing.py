"""Frozen tensors on the device: ``requires_grad`` off for what a partial update leaves out.

Which tensors are frozen is the wire's rule (:func:`fedge.protos.frozen_tensors.frozen_names`,
shared with the server); this module applies it to a torch model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def freeze_parameters(model: nn.Module, frozen: set[str]) -> None:
    """Set ``requires_grad`` off for the frozen parameters and on for the rest."""
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
