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

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from fedge.client.train_config import TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from fedge.tasks.base import FederatedTask, Split

MB = 1 << 20

#: ``probe(cfg, batch)``: peak activation bytes of one forward + backward pass at ``batch`` examples.
Probe = Callable[[TrainConfig, int], int]


def _activation_bytes(model: nn.Module, task: FederatedTask, data: Split, cfg: TrainConfig, batch: int) -> int:
    import torch

    from fedge.client.checkpointing import training_forward
    from fedge.client.memory import ActivationMeter

    meter = ActivationMeter()
    x, y = torch.from_numpy(data.x[:batch]), torch.from_numpy(data.y[:batch])
    with meter.track(model):
        task.loss(training_forward(model, cfg.checkpointing, cfg.checkpoint_segments)(x), y).backward()
    model.zero_grad(set_to_none=True)
    return meter.peak_bytes


def fit_to_budget(model: nn.Module, task: FederatedTask, data: Split, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with checkpointing and batch size chosen to fit ``cfg.memory_mb`` (torch runtime)."""
    if cfg.memory_mb <= 0:
        return cfg
    from torch import nn

    from fedge.client.memory import param_bytes

    segments = len(model) if isinstance(model, nn.Sequential) else 0
    fixed = param_bytes(model, 1 if cfg.momentum > 0 else 0)
    return choose_for_budget(cfg, fixed, lambda option, batch: _activation_bytes(model, task, data, option, batch),
                             segments, len(data))


def choose_for_budget(cfg: TrainConfig, fixed: int, probe: Probe, segments: int, num_examples: int) -> TrainConfig:
    """``cfg`` with checkpointing and batch size chosen to fit ``cfg.memory_mb``, on any runtime.

    ``fixed``: weight, gradient and optimiser bytes; ``segments``: top-level children that
    checkpointing can cut (0: the model cannot be checkpointed).
    """
    if cfg.memory_mb <= 0:
        return cfg
    budget = cfg.memory_mb * MB
    options = [replace(cfg, checkpointing=False)]
    if segments:
        options.append(replace(cfg, checkpointing=True, checkpoint_segments=min(max(cfg.checkpoint_segments, 2), segments)))
    need = float(fixed)  # raised below to the smallest need tried
    for option in options:
        probe_batch = min(2, num_examples)
        per_example = probe(option, probe_batch) / probe_batch
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
