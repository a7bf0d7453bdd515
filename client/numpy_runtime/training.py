"""Local training on the numpy runtime: the same round as :mod:`fedge.client.training`.

Mini-batch SGD with the semantics of ``torch.optim.SGD`` (momentum buffer started from
the first gradient, weight decay added to the gradient, no dampening, no Nesterov),
with the FedProx term ``mu/2 * ||w - w_start||^2`` and the L1 term ``l1 * ||w||_1`` on
the weights that train, the steps of LSQ quantisers trained beside them (weight decay
included, as in the torch runtime where they share the optimiser), the same batch
order (:func:`fedge.client.local_round.batch_order`) and the same statistics.
The reported loss is the mean cross-entropy, without the penalty terms.

float32 updates use fused multiply-adds, as torch's CPU kernels do, so float32 runs
track torch's closely; float64 is exact to rounding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from fedge.client.train_config import TrainConfig
from fedge.client.local_round import TrainStats, batch_order, optimiser_slots
from fedge.client.numpy_runtime.lsq import NumpyLSQ
from fedge.client.numpy_runtime.memory import CacheMeter, param_bytes
from fedge.client.numpy_runtime.network import NumpyNetwork, cross_entropy
from fedge.tasks.base import Split


def _axpy(a: np.ndarray, alpha: float, b: np.ndarray) -> np.ndarray:
    """``a + alpha * b`` rounded once (a fused multiply-add) for float32, as torch's ``add(.., alpha=)``."""
    if a.dtype == np.float32:
        return (a.astype(np.float64) + np.float64(np.float32(alpha)) * b.astype(np.float64)).astype(np.float32)
    return a + alpha * b


class SGD:
    """``torch.optim.SGD(lr, momentum, weight_decay)`` over named arrays, updated in place."""

    def __init__(self, lr: float, momentum: float, weight_decay: float) -> None:
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            p = params[name]
            if self.weight_decay:
                grad = _axpy(grad, self.weight_decay, p)
            if self.momentum:
                buf = self.buffers.get(name)
                if buf is None:
                    buf = self.buffers[name] = np.array(grad, dtype=p.dtype)
                else:
                    buf *= p.dtype.type(self.momentum)
                    buf += grad
                grad = buf
            p[...] = _axpy(p, -self.lr, grad)


def train_numpy(
    net: NumpyNetwork,
    data: Split,
    cfg: TrainConfig,
    rng: np.random.Generator,
    trainable: Iterable[str] | None = None,
    qat: NumpyLSQ | None = None,
) -> TrainStats:
    """Train ``net`` in place on ``data`` (the torch runtime's ``train``, in numpy).

    ``trainable``: the tensor names that train (default all; frozen ones keep their values).
    With ``qat``, train through its fake quantisers: the weights and the learned steps.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty local dataset")
    start = time.perf_counter()
    names = set(net.tensors) if trainable is None else set(trainable)
    optimiser = SGD(cfg.lr, cfg.momentum, cfg.weight_decay)
    step_optimiser = SGD(cfg.lr, 0.0, 0.0)  # LSQ steps: plain SGD, as the torch runtime's own parameter group
    anchor = {k: net.tensors[k].copy() for k in names} if cfg.prox_mu > 0 else None
    segments = cfg.checkpoint_segments if cfg.checkpointing else 0
    meter = CacheMeter(exclude=net.tensors.values())
    x_all = np.asarray(data.x, dtype=net.dtype)
    total, steps, samples = 0.0, 0, 0
    for batch in batch_order(len(data), cfg, rng):
        if qat is not None:
            qat.grads = {}
        loss, grads = net.loss_and_grads(x_all[batch], data.y[batch], names, meter, segments, qat)
        total += loss
        for name, grad in grads.items():
            p = net.tensors[name]
            if anchor is not None:
                grad = grad + cfg.prox_mu * (p - anchor[name])
            if cfg.l1 > 0:
                grad = grad + cfg.l1 * np.sign(p)
            grads[name] = grad
        optimiser.step(net.tensors, grads)
        if qat is not None:
            step_optimiser.step(qat.steps, qat.grads)
        steps += 1
        samples += len(batch)
    return TrainStats.of_round(total, steps, samples, len(data), start, meter.peak_bytes,
                               param_bytes(net.tensors, names, optimiser_slots(cfg)))


def evaluate_numpy(net: NumpyNetwork, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction in [0, 1]) of ``net`` on ``split``."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x, y = split.x[start : start + batch_size], split.y[start : start + batch_size]
        logits = net.predict(x)
        total_loss += cross_entropy(logits, y) * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
    n = max(len(split), 1)
    return total_loss / n, correct / n
