"""LSQ quantisation-aware training in numpy: learned steps, scaled gradients, straight-through rounding.

The numpy twin of :mod:`fedge.client.qat`, with the same keys, the same initialisation
and the arithmetic of torch's LSQ kernel
(``torch._fake_quantize_learnable_per_tensor_affine``, zero point 0), including its
single-precision constants, so both runtimes learn the same steps:

* forward: ``q = clamp(rint(x * (1/s)), qmin, qmax)``, ``y = q * s``, with
  ``1/s`` in float32 and ``rint`` rounding half to even;
* backward: ``dx = dy`` where ``rint(x/s)`` lies in ``[qmin, qmax]``, else 0 (straight
  through); ``ds = g * sum(dy * (q*s - x) / s)`` inside, ``g * sum(dy * qmin|qmax)``
  outside, with ``g = 1 / sqrt(numel * qmax)`` (the gradient scale of Esser et al.);
* a step starts at ``max(2 * mean|x| / sqrt(qmax), 1e-8)`` from the first tensor it sees.

Like the torch runtime, conv (1-D and 2-D) and linear layers are quantised (weights at ``bits``,
inputs at ``act_bits``, signed); the steps are float32 device state, kept across rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: Smallest step used (the torch runtime's ``LSQQuantiser.MIN_STEP``).
MIN_STEP = 1e-8

#: Metric-key prefix of the learned steps a client reports (as the torch runtime's).
STEP_METRIC_PREFIX = "qat.step."


class NumpyLSQ:
    """Learned per-tensor steps for ``layers`` (paths): keys ``<layer>.weight`` / ``<layer>.input``."""

    def __init__(self, layers: Sequence[str], weight_bits: int = 8, act_bits: int = 8) -> None:
        if not layers:
            raise ValueError("the model has no conv or linear layer to quantise")
        for bits in (weight_bits, act_bits):
            if not 2 <= bits <= 8:
                raise ValueError(f"LSQ bits must be in [2, 8], got {bits}")
        self.ranges: dict[str, tuple[int, int]] = {}
        for layer in layers:
            for what, bits in (("weight", weight_bits), ("input", act_bits)):
                self.ranges[f"{layer}.{what}"] = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        self.steps: dict[str, np.ndarray] = {k: np.ones(1, dtype=np.float32) for k in self.ranges}
        self.initialised: set[str] = set()
        self.grads: dict[str, np.ndarray] = {}

    def step_values(self) -> dict[str, float]:
        """Learned steps by ``<layer>.weight`` / ``<layer>.input``."""
        return {k: float(self.effective(k)) for k in self.steps}

    def effective(self, key: str) -> np.float32:
        """The step used, ``max(|raw|, MIN_STEP)``: positive by construction, as the torch
        runtime's :class:`~fedge.client.qat.LSQQuantiser` (the raw value is what trains)."""
        return np.float32(max(abs(float(self.steps[key][0])), MIN_STEP))

    def load_steps(self, steps: Mapping[str, float]) -> None:
        """Set the steps (keys as :meth:`step_values` gives them)."""
        if set(steps) != set(self.steps):
            missing, extra = sorted(set(self.steps) - set(steps)), sorted(set(steps) - set(self.steps))
            raise ValueError(f"LSQ steps do not match the model: missing {missing}, unexpected {extra}")
        for key, value in steps.items():
            if not float(value) > 0:
                raise ValueError(f"LSQ step {key!r} must be > 0, got {value}")
            self.steps[key][0] = np.float32(value)
            self.initialised.add(key)

    def quantise(self, key: str, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Fake-quantised ``x`` and the cache its backward pass needs."""
        qmin, qmax = self.ranges[key]
        if key not in self.initialised:
            self.steps[key][0] = np.float32(max(2 * float(np.abs(x).mean()) / math.sqrt(qmax), MIN_STEP))
            self.initialised.add(key)
        scale = self.effective(key)
        inv = np.float32(1.0) / scale
        q = np.rint(x * inv.astype(x.dtype))
        y = np.clip(q, qmin, qmax) * scale.astype(x.dtype)  # float32: one rounding, as torch's kernel
        return y, (x, q, scale, np.float32(np.sign(self.steps[key][0])))

    def backward(self, key: str, dy: np.ndarray, cache: tuple) -> np.ndarray:
        """``dL/dx`` (straight through inside the range); adds ``dL/ds`` to :attr:`grads`."""
        x, q, scale, raw_sign = cache
        qmin, qmax = self.ranges[key]
        inside = (q >= qmin) & (q <= qmax)
        f = x.dtype.type
        grad_factor = np.float32(1.0 / math.sqrt(x.size * qmax))
        inv = np.float32(1.0) / scale
        fake = (np.clip(q, qmin, qmax).astype(np.float32) * scale).astype(x.dtype)
        per = np.where(
            inside,
            dy * (fake - x) * f(inv) * f(grad_factor),
            np.where(q < qmin, dy * f(np.float32(qmin)), dy * f(np.float32(qmax))) * f(grad_factor),
        )
        total = np.asarray(per.sum(), dtype=np.float32).reshape(1) * raw_sign  # d|raw|/draw = sign(raw)
        self.grads[key] = self.grads[key] + total if key in self.grads else total
        return np.where(inside, dy, 0).astype(dy.dtype, copy=False)

    def metrics(self) -> dict[str, float]:
        """The steps as reply metrics: ``{"qat.step.<layer>.weight": step, ...}`` (as the torch client)."""
        return {STEP_METRIC_PREFIX + k: v for k, v in self.step_values().items()}
