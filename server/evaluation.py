"""Central evaluation of the global model on the task's held-out test split."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedge.client.model_io import load_arrays
from fedge.tasks.base import FederatedTask, Split, evaluate


class CentralEvaluator:
    """Loss and accuracy of an ArrayRecord of global weights on a test split."""

    def __init__(self, task: FederatedTask, test: Split, seed: int = 0) -> None:
        self.task = task
        self.test = test
        torch.manual_seed(seed)
        self.model = task.build_model()

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the weights in ``arrays``."""
        load_arrays(self.model, {k: v.numpy() for k, v in arrays.items()})
        return evaluate(self.model, self.task, self.test)
