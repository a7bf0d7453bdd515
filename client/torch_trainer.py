"""The torch runtime: a task's ``nn.Module`` trained with :func:`fedge.client.training.train`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedge.client.budget import fit_to_budget
from fedge.client.train_config import TrainConfig
from fedge.client.freezing import freeze_parameters
from fedge.client.model_io import load_arrays, model_arrays
from fedge.client.qat import LSQModel, step_metrics
from fedge.client.local_round import RoundResult
from fedge.client.training import train
from fedge.tasks.base import FederatedTask, Split, evaluate


class TorchTrainer:
    """``task.build_model()`` (seeded with ``seed``) and the LSQ steps it learns once QAT starts."""

    runtime = "torch"

    def __init__(self, task: FederatedTask, seed: int) -> None:
        self.task = task
        torch.manual_seed(seed)
        self.model = task.build_model()
        self.qat: LSQModel | None = None  # learned LSQ steps, kept across rounds once QAT starts

    def arrays(self) -> dict[str, np.ndarray]:
        return model_arrays(self.model)

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        load_arrays(self.model, weights)

    def train(self, data: Split, cfg: TrainConfig, rng: np.random.Generator, server_round: int,
              frozen: set[str], seed: int) -> RoundResult:
        torch.manual_seed(seed)
        freeze_parameters(self.model, frozen)
        quantising = bool(cfg.qat.bits) and server_round >= cfg.qat.start_round
        if quantising and self.qat is None:
            self.qat = LSQModel(self.model, cfg.qat.bits, cfg.qat.act_bits)
        qat = self.qat if quantising else None
        cfg = fit_to_budget(self.model, self.task, data, cfg)
        stats = train(self.model, self.task, data, cfg, rng, qat)
        return RoundResult(stats, cfg, step_metrics(qat) if qat is not None else {})

    def evaluate(self, data: Split) -> tuple[float, float]:
        return evaluate(self.model, self.task, data)
