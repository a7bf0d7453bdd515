"""What EdgeClient asks of a training runtime, and how a runtime is chosen.

Two runtimes train a device's model: ``torch`` (:class:`fedge.client.torch_trainer.TorchTrainer`,
any torch model) and ``numpy`` (:class:`fedge.client.numpy_runtime.trainer.NumpyTrainer`,
models declared as a layer spec; no torch needed). Both hold the model under the same
state names, train a round with the same semantics and report the same metrics, so the
server cannot tell them apart. A runtime is imported only when chosen: a numpy device
never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedge.client.train_config import RUNTIMES, TrainConfig
from fedge.client.local_round import RoundResult

if TYPE_CHECKING:
    from fedge.tasks.base import FederatedTask, Split

__all__ = ["RUNTIMES", "RoundResult", "Trainer", "make_trainer"]


class Trainer(Protocol):
    """A device's model on one runtime."""

    runtime: str
    model: Any  # the runtime's model: an nn.Module (torch) or a NumpyNetwork (numpy)
    qat: Any  # the learned LSQ steps once QAT has started, else None

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the model's state by name (what goes on the wire)."""
        ...

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        """Set the model's state (names and shapes must match)."""
        ...

    def train(self, data: Split, cfg: TrainConfig, rng: np.random.Generator, server_round: int,
              frozen: set[str], seed: int) -> RoundResult:
        """Train in place: frozen tensors fixed, QAT from ``cfg.qat``; ``seed`` for any randomness."""
        ...

    def evaluate(self, data: Split) -> tuple[float, float]:
        """Mean loss and accuracy on ``data``."""
        ...


def make_trainer(runtime: str, task: FederatedTask, seed: int) -> Trainer:
    """The ``runtime``'s trainer of ``task``'s model; ``ValueError`` names an unknown runtime
    or (numpy) the first layer it cannot run, before any data is touched."""
    if runtime == "torch":
        from fedge.client.torch_trainer import TorchTrainer

        return TorchTrainer(task, seed)
    if runtime == "numpy":
        from fedge.client.numpy_runtime.trainer import NumpyTrainer

        return NumpyTrainer(task, seed)
    raise ValueError(f"unknown runtime {runtime!r} (expected one of {', '.join(RUNTIMES)})")
