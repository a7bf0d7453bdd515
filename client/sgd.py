"""Mini-batch SGD with momentum and weight decay, step for step what ``torch.optim.SGD`` does on CPU.

Written by hand, not taken from ``torch.optim``, for start-up time alone: every
``torch.optim`` optimiser's ``step`` and ``zero_grad`` import ``torch._dynamo`` on first
use (``torch.optim.optimizer._use_grad_for_differentiable`` and ``torch._disable_dynamo``
in torch 2.13), 1-2.5 s of imports on a 2-core machine, paid by every worker process and
every device before its first step (or by the fork server preloading it for them). Training
needs none of what dynamo is for.

The arithmetic is that of ``torch.optim.SGD``'s single-tensor path (the path it takes for
CPU tensors: no ``foreach``, no ``fused``), with the same tensor operations in the same
order, so the weights are the same bit for bit (``tests/test_sgd.py`` compares both over
steps with momentum, weight decay and two parameter groups; the default run's pinned
sha256 in ``tests/test_default_run.py`` did not move). Not supported, because training
never asks for them: dampening, Nesterov, ``maximize``, sparse gradients, closures.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)`` on CPU tensors.

    Parameters
    ----------
    params:
        The tensors to update (``requires_grad``); a step skips those without a gradient.
    lr:
        Learning rate (>= 0).
    momentum:
        Momentum factor (>= 0); the buffer starts as the first gradient, as in torch.
    weight_decay:
        L2 penalty (>= 0), added to the gradient before the momentum.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.param_groups: list[dict] = []
        self._momentum_buffers: dict[torch.Tensor, torch.Tensor] = {}
        self.add_param_group({"params": list(params), "lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self._defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}

    def add_param_group(self, group: dict) -> None:
        """Add a group: ``{"params": [...]}`` plus any of ``lr``, ``momentum``, ``weight_decay``
        (missing ones take the constructor's values, as in torch)."""
        group = {**getattr(self, "_defaults", {}), **group, "params": list(group["params"])}
        for key in ("lr", "momentum", "weight_decay"):
            if group[key] < 0:
                raise ValueError(f"invalid {key}: {group[key]} (must be >= 0)")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``set_to_none=False``: zero it in place)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if momentum != 0:
                    buf = self._momentum_buffers.get(p)
                    if buf is None:
                        buf = self._momentum_buffers[p] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1)  # torch: alpha = 1 - dampening, dampening 0
                    grad = buf
                p.add_(grad, alpha=-lr)
