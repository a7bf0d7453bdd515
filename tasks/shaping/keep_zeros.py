"""Devices keep a pruned model's zeros: masks travel implicitly as the zeros of the broadcast.

:func:`keep_zeros` hooks a model so that each time weights are loaded into it
(``load_state_dict``: the device receiving the global model), the zeros of its prunable
tensors (float, >= 2-D: conv and linear weights) become its mask, and from then on
those entries get zero gradient. SGD with a fresh optimiser per round (momentum from 0,
weight decay of a zero weight is 0, L1 and FedProx gradients are 0 there) then leaves
them exactly zero, so a device's update is zero at every pruned position.
"""

from __future__ import annotations

import torch
from torch import nn


def prunable(name: str, tensor: torch.Tensor) -> bool:
    """Tensors magnitude pruning touches: float weights of >= 2 dimensions (not biases, not norms)."""
    return tensor.is_floating_point() and tensor.dim() >= 2 and name.endswith("weight")


def keep_zeros(model: nn.Module) -> nn.Module:
    """Hook ``model`` (in place, returned) so its loaded zeros stay zero in training."""
    masks: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())

    def remask(module: nn.Module, incompatible: object) -> None:
        for name, param in params.items():
            if prunable(name, param):
                masks[name] = (param.detach() != 0).to(param.dtype)

    for name, param in params.items():
        if prunable(name, param):
            param.register_hook(lambda grad, name=name: grad * masks[name] if name in masks else grad)
    model.register_load_state_dict_post_hook(remask)
    return model
