"""What every training runtime shares: the batch order of a round and its statistics.

Plain numpy, so the torch runtime (:mod:`fedge.client.training`) and the numpy runtime
(:mod:`fedge.client.numpy_runtime.training`) draw the same batches from the same
generator and report the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import time

import numpy as np

from fedge.client.train_config import TrainConfig


@dataclass(frozen=True)
class TrainStats:
    """What one round of local training did."""

    mean_loss: float  # mean training loss over the steps taken
    num_examples: int  # size of the local training set
    steps: int  # optimiser steps taken
    compute_s: float  # wall-clock seconds spent training
    peak_activation_bytes: int = 0  # most activation bytes kept for backward at once (client.memory)
    param_bytes: int = 0  # weights + gradients + optimiser state
    samples: int = 0  # examples processed over all steps (forward + backward), partial batches included

    @classmethod
    def of_round(cls, total_loss: float, steps: int, samples: int, num_examples: int, started: float,
                 peak_activation_bytes: int, param_bytes: int) -> TrainStats:
        """A round's statistics from its running sums; ``started``: its ``time.perf_counter()``."""
        return cls(total_loss / max(steps, 1), num_examples, steps, time.perf_counter() - started,
                   peak_activation_bytes, param_bytes, samples)


def optimiser_slots(cfg: TrainConfig) -> int:
    """State tensors SGD keeps per trainable tensor: 1 (the momentum buffer) with momentum, else 0."""
    return 1 if cfg.momentum > 0 else 0


def batch_order(num_examples: int, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for one round: shuffled epochs, cut to ``local_steps`` if set."""
    per_epoch = max(1, -(-num_examples // cfg.batch_size))
    epochs = -(-cfg.local_steps // per_epoch) if cfg.local_steps > 0 else cfg.local_epochs
    batches: list[np.ndarray] = []
    for _ in range(epochs):
        perm = rng.permutation(num_examples)
        batches.extend(perm[i : i + cfg.batch_size] for i in range(0, num_examples, cfg.batch_size))
    return batches[: cfg.local_steps] if cfg.local_steps > 0 else batches


@dataclass(frozen=True)
class RoundResult:
    """One round of local training: its statistics, the config it ran with (after the
    memory budget chose batch size and checkpointing) and runtime-specific metrics."""

    stats: TrainStats
    cfg: TrainConfig
    metrics: dict[str, float] = field(default_factory=dict)
