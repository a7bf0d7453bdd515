"""Central evaluation of the global model on the task's held-out test split.

torch is imported when an evaluator is built, not with this module: a ``fedge-sim`` run
whose evaluation runs in another process (:mod:`fedge.simulations.evaluation_process`)
imports this module's :data:`Evaluate` type and no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from fedge.tasks.base import FederatedTask, Split, evaluate

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord

#: What runs central evaluation: an ArrayRecord of global weights in, ``(mean loss,
#: accuracy in [0, 1])`` out (:class:`CentralEvaluator`, or the process of
#: :class:`fedge.simulations.evaluation_process.EvaluationProcess`).
Evaluate = Callable[["ArrayRecord"], tuple[float, float]]


class CentralEvaluator:
    """Loss and accuracy of an ArrayRecord of global weights on a test split."""

    def __init__(
        self, task: FederatedTask, test: Split, seed: int = 0, rebuild: Callable[[], torch.nn.Module] | None = None
    ) -> None:
        import torch

        self.task = task
        self.test = test
        self.rebuild = rebuild  # the model of the current architecture, when structured pruning changes it
        torch.manual_seed(seed)
        self.model = task.build_model()

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the weights in ``arrays``."""
        return self.evaluate_weights({k: v.numpy() for k, v in arrays.items()})

    def evaluate_weights(self, weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the named arrays ``weights`` (the model's state names)."""
        from fedge.client.model_io import load_arrays

        if self.rebuild is not None and _layout(self.model) != {k: tuple(v.shape) for k, v in weights.items()}:
            self.model = self.rebuild()
        load_arrays(self.model, weights)
        return evaluate(self.model, self.task, self.test)


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
