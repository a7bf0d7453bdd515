"""What a federated task is: data, a model factory, a loss and its metrics.

A task is plain torch + numpy (no flwr), so the device client can import it. User
tasks subclass :class:`FederatedTask` and are selected by Hydra ``_target_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Split:
    """Examples ``x`` (float32, ``(N, *input_shape)``) and labels ``y`` (int64, ``(N,)``)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} examples but y has {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Split:
        """The examples at ``indices``."""
        return Split(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class TaskData:
    """A task's federated training pool and its held-out central test split.

    ``groups`` (optional, ``(N_train,)``) is a natural client id per training example
    (writer, subject), for natural-id partitioning.
    """

    train: Split
    test: Split
    groups: np.ndarray | None = None


class FederatedTask(ABC):
    """A learning problem: its data, its model, its loss."""

    #: Short name used in configs and results.
    name: str = ""
    #: Number of classes of the classification problem.
    num_classes: int = 0

    @abstractmethod
    def load(self) -> TaskData:
        """Load the whole dataset (from files shipped in an installed package)."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (seed torch first for reproducible weights)."""

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch (cross-entropy by default)."""
        return nn.functional.cross_entropy(logits, target)

    def training_loss(self, logits: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Loss local training minimises on a batch (``inputs`` for losses that need them,
        e.g. distillation's teacher); :meth:`loss` by default."""
        return self.loss(logits, target)


def check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 < value < 1`` (e.g. a held-out test fraction)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


@torch.no_grad()
def evaluate(model: nn.Module, task: FederatedTask, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """Mean loss and accuracy (fraction in [0, 1]) of ``model`` on ``split``."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = torch.from_numpy(split.x[start : start + batch_size])
        y = torch.from_numpy(split.y[start : start + batch_size])
        logits = model(x)
        total_loss += float(task.loss(logits, y)) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
    n = max(len(split), 1)
    return total_loss / n, correct / n
