"""The torch runtime: a task's ``nn.Module`` trained with :func:`fedge.client.training.train`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedge.client.budget import fit_to_budget
from fedge.client.train_config import TrainConfig
from fedge.client.freezing import freeze_parameters
from fedge.client.model_io import load_arrays
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
        self._state: dict[str, torch.Tensor] = {}  # the model's tensors by name (see _tensors)
        self._views: dict[str, np.ndarray] = {}  # numpy views of those tensors' memory
        self._tensors_of: torch.nn.Module | None = None  # the module _state belongs to
        self._frozen: tuple[torch.nn.Module, frozenset[str]] | None = None  # what freeze_parameters last applied, to which module

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the model's parameters and buffers, by name."""
        self._tensors()
        return {k: v.copy() for k, v in self._views.items()}

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy ``weights`` into the model's tensors (names and shapes must match exactly).

        The same values as :func:`~fedge.client.model_io.load_arrays` (``load_state_dict``
        copies too), without walking the module tree on every call: a simulation loads a
        broadcast for every client-round. ``weights`` may be read-only (a shared broadcast)."""
        tensors = self._tensors()
        if weights.keys() != tensors.keys():
            load_arrays(self.model, weights)  # raises, naming the missing and unexpected keys
            return
        views = self._views
        for name, value in weights.items():
            if value.shape != views[name].shape:
                raise RuntimeError(f"size mismatch for {name}: copying a param with shape {tuple(value.shape)}, "
                                   f"the model has {tuple(tensors[name].shape)}")
        for name, value in weights.items():  # into the tensor's memory (numpy's copy: ``value`` may be read-only)
            np.copyto(views[name], value, casting="unsafe")  # cast as copy_ does

    def _tensors(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers by name (the tensors themselves), cached
        while ``self.model`` is the same module."""
        if self._tensors_of is not self.model:
            self._state = self.model.state_dict(keep_vars=True)
            # fedge never swaps a tensor's memory (its SGD and load write in place), so
            # these views stay the tensors' while the module is the same: reading and
            # loading a model's 8 tensors through them skips ~3 torch calls per tensor
            self._views = {k: v.detach().numpy() for k, v in self._state.items()}
            self._tensors_of = self.model
        return self._state

    def train(self, data: Split, cfg: TrainConfig, rng: np.random.Generator, server_round: int,
              frozen: set[str], seed: int) -> RoundResult:
        # The CPU generator only: what training draws from (the model lives on the CPU).
        # torch.manual_seed would also queue a seed for every lazily initialised
        # accelerator, recording a Python stack trace each time: ~0.1 ms per client-round.
        torch.default_generator.manual_seed(seed)
        if self._frozen is None or self._frozen[0] is not self.model or self._frozen[1] != frozen:
            freeze_parameters(self.model, frozen)  # a walk of the module tree: only when the frozen set changes
            self._frozen = (self.model, frozenset(frozen))
        quantising = bool(cfg.qat.bits) and server_round >= cfg.qat.start_round
        if quantising and self.qat is None:
            self.qat = LSQModel(self.model, cfg.qat.bits, cfg.qat.act_bits)
        qat = self.qat if quantising else None
        cfg = fit_to_budget(self.model, self.task, data, cfg)
        self.task.begin_round(server_round)  # a loss that changes over rounds (distillation's annealed alpha)
        stats = train(self.model, self.task, data, cfg, rng, qat)
        return RoundResult(stats, cfg, step_metrics(qat) if qat is not None else {})

    def evaluate(self, data: Split) -> tuple[float, float]:
        return evaluate(self.model, self.task, data)
