"""LSQ quantisers: the effective step stays positive whatever the optimiser does to the raw one."""

from __future__ import annotations

import math

import pytest
import torch

from fedge.client.qat import LSQModel, LSQQuantiser, step_metrics
from fedge.tasks.digits import DigitsTask


def test_raw_step_set_negative_or_zero_still_quantises_with_a_positive_step():
    q = LSQQuantiser(8)
    x = torch.linspace(-2, 2, 101)
    q(x)  # LSQ initialisation from the first input
    for raw in (-5.06, -1e-12, 0.0):
        with torch.no_grad():
            q.raw_step.fill_(raw)
        step = q.step()
        assert step.item() > 0 and step.item() == pytest.approx(max(abs(raw), LSQQuantiser.MIN_STEP))
        out = q(x)
        assert torch.isfinite(out).all()
        # The output lies on the grid of the effective step, within [qmin, qmax] steps.
        levels = out / step
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.min() >= q.qmin and levels.max() <= q.qmax


def test_mirrored_step_keeps_lsq_gradient_scale():
    """For raw > 0 the gradient is LSQ's own; for raw < 0 it is the same, mirrored (sign(raw))."""
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    grads = {}
    for raw in (0.05, -0.05):
        q = LSQQuantiser(4)
        q.set_step(0.05)
        with torch.no_grad():
            q.raw_step.fill_(raw)
        (q(x) * x).sum().backward()
        grads[raw] = q.raw_step.grad.item()
    assert grads[0.05] != 0 and grads[-0.05] == pytest.approx(-grads[0.05])
    # The kernel's LSQ gradient scale g = 1/sqrt(N * qmax) is applied: same as torch's kernel with s itself.
    s = torch.tensor([0.05], requires_grad=True)
    ref = torch._fake_quantize_learnable_per_tensor_affine(x, s, torch.zeros(1), -8, 7, 1.0 / math.sqrt(200 * 7))
    (ref * x).sum().backward()
    assert grads[0.05] == pytest.approx(s.grad.item())


def test_optimiser_that_drives_steps_through_zero_leaves_them_positive_and_outputs_finite():
    task = DigitsTask()
    data = task.load()
    torch.manual_seed(0)
    model = task.build_model()
    qat = LSQModel(model, weight_bits=8)
    x, y = torch.from_numpy(data.train.x[:64]), torch.from_numpy(data.train.y[:64])
    qat(x)  # initialise the steps
    raw = [q.raw_step for q in qat.quantisers.values()]
    # A huge learning rate on a loss that rewards small steps pushes every raw step far below zero.
    optimiser = torch.optim.SGD(raw, lr=1e3)
    for _ in range(3):
        optimiser.zero_grad()
        sum(q.raw_step for q in qat.quantisers.values()).sum().backward()
        optimiser.step()
    assert all(p.item() < 0 for p in raw)
    steps = qat.steps()
    assert all(s > 0 and math.isfinite(s) for s in steps.values())
    assert step_metrics(qat) == {f"qat.step.{k}": v for k, v in steps.items()}
    # Training through the quantisers still runs and yields finite logits and gradients.
    optimiser = torch.optim.SGD(list(model.parameters()) + raw, lr=0.05, momentum=0.9)
    for _ in range(5):
        optimiser.zero_grad()
        logits = qat(x)
        assert torch.isfinite(logits).all()
        loss = task.loss(logits, y)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in raw)
        optimiser.step()
    assert all(s > 0 for s in qat.steps().values())
    # The effective steps load into a fresh quantised view as they are (what fedge-export does).
    fresh = LSQModel(task.build_model(), weight_bits=8)
    fresh.load_steps(qat.steps())
    assert fresh.steps() == pytest.approx(qat.steps())


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_load_steps_refuses_non_positive_or_non_finite_steps(bad):
    qat = LSQModel(DigitsTask().build_model())
    steps = {k: 0.01 for k in qat.steps()}
    steps["features.0.weight"] = bad
    with pytest.raises(ValueError, match="features.0.weight"):
        qat.load_steps(steps)
