"""What a federated task is: data, a model factory, a loss and its metrics.

A task is plain torch + numpy (no flwr), so the device client can import it. User
tasks subclass :class:`FederatedTask` and are selected with ``task=custom
task.path=FILE_OR_MODULE`` (:mod:`fedge.tasks.custom`) or by Hydra ``_target_``.

torch is imported only when a torch model or loss is asked for: a task that declares
its model as a layer spec (:meth:`FederatedTask.model_spec`) imports without torch, so
a device on the numpy runtime (``fedge-client --runtime numpy``) needs no torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedge.tasks.layer_spec import Sequential


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
    """A learning problem: its data, its model, its loss.

    Subclass it for your own task (README "Your own task"; ``fedge-sim task=custom
    task.path=./my_task.py``). The framework uses exactly these members:

    - :attr:`name` (results, logs), :attr:`num_classes` (labels are ``0..num_classes-1``)
      and :attr:`input_shape` (one example without the batch axis; ``fedge-client``
      reshapes the rows of a device's data file to it, ``fedge-export`` traces the model
      with it). Set them on the class, or on the instance in ``__init__`` when they
      depend on the constructor's arguments.
    - :meth:`load` for the data, :meth:`build_model` for the model, :meth:`loss`.

    Instances are pickled to worker processes (``backend=local``/``ray``): keep only
    plain settings in attributes, and load data in :meth:`load`, not ``__init__``.
    """

    #: Short name used in results and logs.
    name: str = ""
    #: Number of classes of the classification problem; labels are ``0..num_classes-1``.
    num_classes: int = 0
    #: Shape of one example as the model takes it, without the batch axis, e.g. ``(1, 8, 8)``.
    input_shape: tuple[int, ...] = ()

    @abstractmethod
    def load(self) -> TaskData:
        """The whole dataset: the training pool clients are partitioned from, and the
        held-out central test split. ``x`` float32 ``(N, *input_shape)``, ``y`` int64 ``(N,)``.

        Must be **deterministic**: every call returns the same arrays in the same order.
        Every worker process calls ``load()`` again and takes its clients' partitions by
        index, so seed every shuffle, split or subsample (``np.random.default_rng(seed)``,
        ``random_state=seed``). ``fedge-sim`` calls it twice at start and refuses a task
        whose two results differ (:func:`fedge.tasks.custom.check_deterministic`). Read
        files shipped with the code or on disk; never download at run time.
        """

    def model_spec(self) -> Sequential | None:
        """The model as a layer spec (:mod:`fedge.tasks.layer_spec`), or None if the task has none.

        A task that declares one gets :meth:`build_model` for free and runs on both device
        runtimes (torch and numpy) with the same state names.
        """
        return None

    def build_model(self) -> nn.Module:
        """A freshly initialised model, ``(N, *input_shape)`` float32 -> ``(N, num_classes)``
        logits. The framework seeds torch before calling it, so every process builds the
        same initial weights.

        Default: the torch module of :meth:`model_spec`; a task without a spec overrides this.
        """
        spec = self.model_spec()
        if spec is None:
            raise NotImplementedError(f"{type(self).__name__} must define build_model() or model_spec()")
        from fedge.tasks.layer_spec import to_torch

        return to_torch(spec)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch (cross-entropy by default; the numpy runtime supports only that)."""
        from torch import nn

        return nn.functional.cross_entropy(logits, target)

    def training_loss(self, logits: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Loss local training minimises on a batch (``inputs`` for losses that need them,
        e.g. distillation's teacher); :meth:`loss` by default."""
        return self.loss(logits, target)

    def begin_round(self, server_round: int) -> None:
        """Called by the device's torch trainer before each round's local training
        (``server_round`` from 1), for a :meth:`training_loss` that changes over rounds
        (distillation's annealed ``alpha``). Default: nothing."""


def check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 < value < 1`` (e.g. a held-out test fraction)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def evaluate(model: nn.Module, task: FederatedTask, split: Split, batch_size: int = 512) -> tuple[float, float]:
    """Mean loss and accuracy (fraction in [0, 1]) of ``model`` on ``split``."""
    import torch

    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            x = torch.from_numpy(split.x[start : start + batch_size])
            y = torch.from_numpy(split.y[start : start + batch_size])
            logits = model(x)
            total_loss += float(task.loss(logits, y)) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
    n = max(len(split), 1)
    return total_loss / n, correct / n
