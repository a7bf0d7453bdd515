"""Quantisation-aware training with learned step sizes (LSQ, Esser et al. 2019).

Each conv (1-D or 2-D)/linear weight and each such layer's input activation goes through a fake
quantiser ``q(x) = round(clamp(x / s, qmin, qmax)) * s`` with a *learned* step ``s``;
the rounding passes gradients straight through (STE) and the step's gradient is
scaled by ``g = 1 / sqrt(numel * qmax)`` ("gradient scaling in network quantisation").
Steps start at LSQ's ``2 * mean|x| / sqrt(qmax)``; a step is positive by construction
(:class:`LSQQuantiser`: ``max(|raw|, MIN_STEP)`` with a straight-through floor) and
:func:`fedge.client.training.train` moves steps by plain SGD, without the weights'
momentum (momentum 0.9 carried a last-layer step of ~3e-3 through zero in a few batches). Weights: signed, ``bits`` bits
(8 or 4); activations: signed 8 bits (inputs can be negative: standardised pixels).

The arithmetic is torch's own LSQ kernel, ``torch._fake_quantize_learnable_per_tensor_affine``
(with its ``grad_factor``), the op behind ``torch.ao.quantization._LearnableFakeQuantize``.
torch.ao's QAT flow itself is not used: its eager ``prepare_qat`` swaps modules (new
state names, observers in the state) and its public fake-quantisers learn nothing
(min/max observers); torchao's QAT targets linear layers in LLMs, not conv on CPU.
So this module only wires the kernel: quantisers live beside the model (the model's
state names stay those of the float model, so the federation and the wire are
unchanged) and the forward pass runs through ``torch.func.functional_call`` with
fake-quantised weights and forward pre-hooks on activations. The step sizes are
device state, kept across rounds like error-feedback residuals; each training reply
also reports them as metrics (``qat.step.<layer>.weight`` / ``.input``, see
:func:`step_metrics`), which Flower's strategies average weighted by ``num-examples``
like any client metric, so the server ends a run with one step per quantiser for the
global model (``fedge-export`` builds the int8 graph from them).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from fedge.client.qat_steps import STEP_METRIC_PREFIX

#: The layers LSQ quantises (weights and inputs): every conv (1-D for ``har``, 2-D) and linear layer.
QUANTISED = (nn.Conv1d, nn.Conv2d, nn.Linear)



class LSQQuantiser(nn.Module):
    """Per-tensor signed fake quantiser with a learned step (LSQ) of ``bits`` bits.

    The step is positive by construction. The trained parameter ``raw_step`` is free
    (an optimiser with a large learning rate, momentum or weight decay may push it
    through zero), and the quantiser uses the *effective* step

        ``s = max(|raw_step|, MIN_STEP)``, with ``ds/draw_step = sign(raw_step)``

    (the floor is straight-through: it changes the value, never the gradient). For
    ``raw_step > MIN_STEP``, the normal case, ``s`` is ``raw_step`` and its gradient is
    exactly LSQ's, scaled inside torch's kernel by ``g = 1 / sqrt(numel * qmax)``. A raw
    step pushed below zero is mirrored: the quantiser keeps its magnitude and the
    gradient keeps pointing the optimiser towards the step size the loss wants, instead
    of a negative "step" that turns the quantisation grid upside down and that no int8
    file can store. Rejected alternatives: a log-parametrisation (``s = exp(r)``)
    multiplies LSQ's gradient by ``s``, which changes its scaling (tiny steps stop
    moving); a plain ``clamp`` has no gradient below the floor, so a step that hits it
    stays there.

    ``step()`` is what the forward pass, the reply metrics (``qat.step.*``) and
    ``fedge-export`` use.
    """

    #: Smallest effective step. Far below any useful step (LSQ starts weight steps near
    #: 1e-3..1e-2); it only keeps ``x / s`` finite when the raw step sits at 0.
    MIN_STEP = 1e-8

    zero_point: torch.Tensor
    initialised: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"LSQ bits must be in [2, 8], got {bits}")
        self.bits = bits
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.raw_step = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def step(self) -> torch.Tensor:
        """The effective step, shape ``(1,)``, always ``>= MIN_STEP`` (differentiable; see the class)."""
        magnitude = self.raw_step.abs()
        return magnitude + (magnitude.detach().clamp_min(self.MIN_STEP) - magnitude.detach())

    def set_step(self, value: float) -> None:
        """Set the step to ``value`` (> 0; e.g. aggregated steps, or LSQ's initial value)."""
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"an LSQ step must be finite and > 0, got {value}")
        with torch.no_grad():
            self.raw_step.fill_(value)
            self.initialised.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialised):
            self.set_step(max(2 * x.detach().abs().mean().item() / math.sqrt(self.qmax), self.MIN_STEP))
        grad_factor = 1.0 / math.sqrt(x.numel() * self.qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.step(), self.zero_point.float(), self.qmin, self.qmax, grad_factor
        )


class LSQModel:
    """Fake-quantised training view of ``model``: weights at ``weight_bits``, inputs at ``act_bits``.

    ``quantisers`` (an ``nn.ModuleDict``, keys ``<layer>.weight`` / ``<layer>.input``
    with dots as ``/``) holds the learned steps; train them with the model's weights.
    """

    def __init__(self, model: nn.Module, weight_bits: int = 8, act_bits: int = 8) -> None:
        self.model = model
        layers = {n: m for n, m in model.named_modules() if isinstance(m, QUANTISED)}
        if not layers:
            raise ValueError(f"{type(model).__name__} has no conv or linear layer to quantise")
        self.layers = layers
        self.quantisers = nn.ModuleDict()
        for name in layers:
            self.quantisers[_key(name, "weight")] = LSQQuantiser(weight_bits)
            self.quantisers[_key(name, "input")] = LSQQuantiser(act_bits)

    def quantiser(self, key: str) -> LSQQuantiser:
        """The quantiser at ``key`` of :attr:`quantisers` (``<layer>/weight`` with ``/`` for dots)."""
        q = self.quantisers[key]
        assert isinstance(q, LSQQuantiser)
        return q

    def steps(self) -> dict[str, float]:
        """Effective learned steps (all > 0) by ``<layer>.weight`` / ``<layer>.input``."""
        return {k.replace("/", "."): self.quantiser(k).step().item() for k in self.quantisers}

    def load_steps(self, steps: Mapping[str, float]) -> None:
        """Set the learned steps (keys as :meth:`steps` gives them, e.g. aggregated ones)."""
        expected = set(self.steps())
        if set(steps) != expected:
            missing, extra = sorted(expected - set(steps)), sorted(set(steps) - expected)
            raise ValueError(f"LSQ steps do not match the model: missing {missing}, unexpected {extra}")
        values = {key: float(steps[key.replace("/", ".")]) for key in self.quantisers}
        for key, value in values.items():  # check all before setting any
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"LSQ step {key.replace('/', '.')!r} must be finite and > 0, got {value}")
        for key, value in values.items():
            self.quantiser(key).set_step(value)

    @contextlib.contextmanager
    def _activation_hooks(self, layers: Mapping[str, nn.Module]) -> Iterator[None]:
        handles = [
            layer.register_forward_pre_hook(lambda _m, args, key=_key(name, "input"): (self.quantisers[key](args[0]),))
            for name, layer in layers.items()
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.model, "", x)

    def pieces(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The model's children as fake-quantised callables, in order (for ``checkpoint_sequential``).

        Each piece quantises its own weights and inputs when it runs, so a checkpointed
        piece recomputed during backward quantises them again and the steps get their
        gradients from the recomputation.
        """
        return [functools.partial(self._run, child, name) for name, child in self.model.named_children()]

    def _run(self, module: nn.Module, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """``module`` (the model or its child ``prefix``) on ``x`` with its layers fake-quantised."""
        inner = {n: m for n, m in self.layers.items() if not prefix or n == prefix or n.startswith(prefix + ".")}
        cut = len(prefix) + 1 if prefix else 0
        weights = {f"{n[cut:]}.weight".lstrip("."): self.quantisers[_key(n, "weight")](m.weight) for n, m in inner.items()}
        with self._activation_hooks(inner):
            return functional_call(module, weights, (x,), strict=False)


def step_metrics(qat: LSQModel) -> dict[str, float]:
    """The learned steps as reply metrics: ``{"qat.step.<layer>.weight": step, ...}``."""
    return {STEP_METRIC_PREFIX + k: v for k, v in qat.steps().items()}


def _key(layer: str, what: str) -> str:
    return f"{layer.replace('.', '/')}.{what}".replace(".", "/")
