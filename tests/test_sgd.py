"""The hand-written SGD (fedge.client.sgd) updates weights bit for bit as torch.optim.SGD does,
and a training step through it imports no ``torch._dynamo``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedge.client.sgd import SGD


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _train(model: nn.Module, make_optimiser, steps: int) -> list[torch.Tensor]:
    params = [p for p in model.parameters()]
    optimiser = make_optimiser(params[:-1])
    optimiser.add_param_group({"params": params[-1:], "momentum": 0.0, "weight_decay": 0.0})  # as QAT's LSQ steps
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        optimiser.zero_grad(set_to_none=True)
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step == 2:
            params[0].grad = None  # a parameter without a gradient is skipped, its momentum kept
        optimiser.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.9, 5e-4), (0.0, 1e-3), (0.0, 0.0)])
def test_same_weights_bit_for_bit_as_torch_optim_sgd(momentum, weight_decay):
    ours = _train(_model(0), lambda p: SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay), steps=6)
    theirs = _train(_model(0), lambda p: torch.optim.SGD(p, lr=0.05, momentum=momentum, weight_decay=weight_decay), steps=6)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], _model(0)[0].weight.detach())  # it did train


def test_zero_grad_in_place_and_negative_settings_refused():
    w = torch.ones(3, requires_grad=True)
    optimiser = SGD([w], lr=0.1)
    w.sum().backward()
    optimiser.zero_grad(set_to_none=False)
    assert w.grad is not None and torch.equal(w.grad, torch.zeros(3))
    with pytest.raises(ValueError, match="lr"):
        SGD([w], lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optimiser.add_param_group({"params": [torch.ones(1, requires_grad=True)], "momentum": -0.5})


def test_a_training_step_imports_no_dynamo():
    code = (
        "import sys, torch; from fedge.client.sgd import SGD\n"
        "w = torch.zeros(2, requires_grad=True); o = SGD([w], lr=0.1, momentum=0.9)\n"
        "for _ in range(2):\n    o.zero_grad(); (w * 2).sum().backward(); o.step()\n"
        "print('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
