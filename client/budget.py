"""A device's memory budget: pick checkpointing and a batch size that fit, or refuse.

``client.memory_mb`` (a device profile's ``memory_mb``; 0 = no limit) bounds the peak
training memory as :mod:`fedge.client.memory` measures it: weights + gradients +
optimiser state + the peak of saved activations. Activation bytes grow linearly with
the batch, so one probe step at batch 2 (forward + backward, no optimiser step, with
:class:`~fedge.client.memory.ActivationMeter`) per setting gives bytes per example.
Preference: the configured batch without checkpointing, then with checkpointing, then
halved batches with checkpointing; if even batch 1 does not fit, the task fails with
a message naming the budget and the need.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fedge.client.checkpointing import training_forward
from fedge.client.train_config import TrainConfig
from fedge.client.memory import ActivationMeter, param_bytes
from fedge.tasks.base import FederatedTask, Split

MB = 1 << 20


def _activation_bytes(model: nn.Module, task: FederatedTask, data: Split, cfg: TrainConfig, batch: int) -> int:
    meter = ActivationMeter()
    x, y = torch.from_numpy(data.x[:batch]), torch.from_numpy(data.y[:batch])
    with meter.track(model):
        task.loss(training_forward(model, cfg.checkpointing, cfg.checkpoint_segments)(x), y).backward()
    model.zero_grad(set_to_none=True)
    return meter.peak_bytes


def fit_to_budget(model: nn.Module, task: FederatedTask, data: Split, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with checkpointing and batch size chosen to fit ``cfg.memory_mb``."""
    if cfg.memory_mb <= 0:
        return cfg
    budget = cfg.memory_mb * MB
    fixed = param_bytes(model, 1 if cfg.momentum > 0 else 0)
    options = [replace(cfg, checkpointing=False)]
    if isinstance(model, nn.Sequential):
        options.append(replace(cfg, checkpointing=True, checkpoint_segments=min(max(cfg.checkpoint_segments, 2), len(model))))
    need = float(fixed)  # raised below to the smallest need tried
    for option in options:
        probe = min(2, len(data))
        per_example = _activation_bytes(model, task, data, option, probe) / probe
        batch = cfg.batch_size
        while batch >= 1:
            need = fixed + per_example * batch
            if need <= budget:
                return replace(option, batch_size=batch)
            if option is options[0]:
                break  # without checkpointing only the configured batch is tried first
            batch //= 2
    raise ValueError(
        f"memory budget {cfg.memory_mb:g} MB is too small: training needs at least {need / MB:.2f} MB "
        f"(weights, gradients and optimiser state {fixed / MB:.2f} MB + activations at batch 1"
        f"{' with checkpointing' if len(options) > 1 else ''})"
    )
