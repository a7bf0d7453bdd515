"""Local training: mini-batch SGD with momentum, L2 (weight decay), L1 and FedProx terms.

Optionally checkpointed (:mod:`fedge.client.checkpointing`); activation memory is
measured with :class:`fedge.client.memory.ActivationMeter`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from fedge.client.checkpointing import training_forward
from fedge.client.local_round import TrainStats, batch_order, optimiser_slots
from fedge.client.train_config import TrainConfig
from fedge.client.memory import ActivationMeter, param_bytes
from fedge.client.qat import LSQModel
from fedge.client.sgd import SGD
from fedge.tasks.base import FederatedTask, Split


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
    optimiser = SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
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
    return TrainStats.of_round(total, steps, samples, len(data), start, meter.peak_bytes,
                               param_bytes(model, optimiser_slots(cfg)))
