"""The numpy runtime as EdgeClient sees it: a task's layer spec trained in numpy.

The model comes from ``task.model_spec()``; a task without one (a user's torch-only
task) is read from ``task.build_model()`` with :func:`fedge.tasks.layer_spec.from_torch`
when torch is installed. Either way a layer the runtime cannot run, or a task with its
own loss, is refused when the trainer is built: before the device touches any data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.client.budget import choose_for_budget
from fedge.client.train_config import TrainConfig
from fedge.client.local_round import optimiser_slots
from fedge.client.numpy_runtime.lsq import NumpyLSQ
from fedge.client.numpy_runtime.memory import CacheMeter, param_bytes
from fedge.client.numpy_runtime.network import NumpyNetwork
from fedge.client.numpy_runtime.training import evaluate_numpy, train_numpy
from fedge.client.local_round import RoundResult
from fedge.tasks.base import FederatedTask, Split
from fedge.tasks.layer_spec import Sequential, UnsupportedLayerError, from_torch


def numpy_spec(task: FederatedTask) -> Sequential:
    """The layer spec the numpy runtime trains for ``task``; ``ValueError`` says why there is none."""
    name = task.name or type(task).__name__
    if type(task).loss is not FederatedTask.loss:
        raise UnsupportedLayerError(
            f"task {name!r} defines its own loss(); the numpy runtime trains with cross-entropy only (use --runtime torch)"
        )
    spec = task.model_spec()
    if spec is not None:
        return spec
    try:
        import torch  # noqa: F401 - only to read a torch-only task's model
    except ImportError:
        raise UnsupportedLayerError(
            f"task {name!r} declares no model_spec() and torch is not installed: the numpy runtime needs the model "
            "as a layer spec (fedge.tasks.layer_spec)"
        ) from None
    return from_torch(task.build_model())


class NumpyTrainer:
    """A spec'd model as a :class:`NumpyNetwork` (float32) and its LSQ steps once QAT starts."""

    runtime = "numpy"

    def __init__(self, task: FederatedTask, seed: int, dtype: type = np.float32) -> None:
        self.task = task
        self.model = NumpyNetwork(numpy_spec(task), dtype, seed)
        self.qat: NumpyLSQ | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        return self.model.state()

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.model.load(weights)

    def _activation_bytes(self, data: Split, cfg: TrainConfig, batch: int, trainable: set[str]) -> int:
        meter = CacheMeter(exclude=self.model.tensors.values())
        segments = cfg.checkpoint_segments if cfg.checkpointing else 0
        self.model.loss_and_grads(data.x[:batch], data.y[:batch], trainable, meter, segments)
        return meter.peak_bytes

    def train(self, data: Split, cfg: TrainConfig, rng: np.random.Generator, server_round: int,
              frozen: set[str], seed: int) -> RoundResult:
        trainable = set(self.model.tensors) - frozen
        quantising = bool(cfg.qat.bits) and server_round >= cfg.qat.start_round
        if quantising and self.qat is None:
            self.qat = NumpyLSQ(self.model.quantised, cfg.qat.bits, cfg.qat.act_bits)
        qat = self.qat if quantising else None
        if cfg.memory_mb > 0:
            fixed = param_bytes(self.model.tensors, trainable, optimiser_slots(cfg))
            cfg = choose_for_budget(cfg, fixed, lambda option, batch: self._activation_bytes(data, option, batch, trainable),
                                    len(self.model.chunks), len(data))
        stats = train_numpy(self.model, data, cfg, rng, trainable, qat)
        return RoundResult(stats, cfg, qat.metrics() if qat is not None else {})

    def evaluate(self, data: Split) -> tuple[float, float]:
        return evaluate_numpy(self.model, data)
