"""Central evaluation of the global model on the task's held-out test split."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord

from fedge.client.model_io import load_arrays
from fedge.tasks.base import FederatedTask, Split, evaluate


class CentralEvaluator:
    """Loss and accuracy of an ArrayRecord of global weights on a test split."""

    def __init__(
        self, task: FederatedTask, test: Split, seed: int = 0, rebuild: Callable[[], torch.nn.Module] | None = None
    ) -> None:
        self.task = task
        self.test = test
        self.rebuild = rebuild  # the model of the current architecture, when structured pruning changes it
        torch.manual_seed(seed)
        self.model = task.build_model()

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the weights in ``arrays``."""
        weights = {k: v.numpy() for k, v in arrays.items()}
        if self.rebuild is not None and _layout(self.model) != {k: tuple(v.shape) for k, v in weights.items()}:
            self.model = self.rebuild()
        load_arrays(self.model, weights)
        return evaluate(self.model, self.task, self.test)


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
