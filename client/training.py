"""Local training: mini-batch SGD with momentum, L2 (weight decay), L1 and FedProx terms.

Optionally checkpointed (:mod:`fedge.client.checkpointing`); activation memory is
measured with :class:`fedge.client.memory.ActivationMeter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedge.client.checkpointing import training_forward
from fedge.client.train_config import TrainConfig
from fedge.client.memory import ActivationMeter, param_bytes
from fedge.client.qat import LSQModel
from fedge.tasks.base import FederatedTask, Split


@dataclass(frozen=True)
class TrainStats:
    """What one round of local training did."""

    mean_loss: float  # mean training loss over the steps taken
    num_examples: int  # size of the local training set
    steps: int  # optimiser steps taken
    compute_s: float  # wall-clock seconds spent training
    peak_activation_bytes: int = 0  # most autograd-saved activation bytes alive at once (client.memory)
    param_bytes: int = 0  # weights + gradients + optimiser state
    samples: int = 0  # examples processed over all steps (forward + backward), partial batches included


def batch_order(num_examples: int, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for one round: shuffled epochs, cut to ``local_steps`` if set."""
    per_epoch = max(1, -(-num_examples // cfg.batch_size))
    epochs = -(-cfg.local_steps // per_epoch) if cfg.local_steps > 0 else cfg.local_epochs
    batches: list[np.ndarray] = []
    for _ in range(epochs):
        perm = rng.permutation(num_examples)
        batches.extend(perm[i : i + cfg.batch_size] for i in range(0, num_examples, cfg.batch_size))
    return batches[: cfg.local_steps] if cfg.local_steps > 0 else batches


def train(
    model: nn.Module,
    task: FederatedTask,
    data: Split,
    cfg: TrainConfig,
    rng: np.random.Generator,
    qat: LSQModel | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``data``; the FedProx anchor is its starting weights.

    With ``qat`` (a fake-quantised view of ``model``), train through it: the weights
    and the quantisers' learned steps together (checkpointed too, if asked).
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty local dataset")
    start = time.perf_counter()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if qat is not None:  # LSQ steps: plain SGD (momentum carries steps of ~1e-3 through zero; decay would shrink them)
        optimiser.add_param_group({"params": list(qat.quantisers.parameters()), "momentum": 0.0, "weight_decay": 0.0})
    anchor = [p.detach().clone() for p in params] if cfg.prox_mu > 0 else None
    forward = training_forward(model, cfg.checkpointing, cfg.checkpoint_segments, qat)
    meter = ActivationMeter()
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    total, steps, samples = 0.0, 0, 0
    with meter.track(model):
        for batch in batch_order(len(data), cfg, rng):
            index = torch.from_numpy(batch)
            optimiser.zero_grad(set_to_none=True)
            x = x_all[index]
            loss = task.training_loss(forward(x), y_all[index], x)
            total += loss.item()
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                loss = loss + 0.5 * cfg.prox_mu * prox
            if cfg.l1 > 0:
                loss = loss + cfg.l1 * sum(p.abs().sum() for p in params)
            loss.backward()
            optimiser.step()
            steps += 1
            samples += len(batch)
    slots = 1 if cfg.momentum > 0 else 0
    return TrainStats(
        total / max(steps, 1),
        len(data),
        steps,
        time.perf_counter() - start,
        meter.peak_bytes,
        param_bytes(model, slots),
        samples,
    )
