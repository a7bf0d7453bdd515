"""A task whose model is shaped: the wrapped task's data and loss, a reshaped model.

:class:`ShapedTask` forwards each :class:`~fedge.tasks.base.FederatedTask` method to the
task it wraps, and changes only what shaping needs: ``build_model`` factorises at fixed
per-layer ranks (so every device builds the server's architecture) and hooks the model to
keep a pruned model's zeros; ``training_loss`` adds a teacher's soft targets (and, with
``feature_weight``, the attention-transfer hint on ``feature_layer``: every model it
builds is tapped there, and the loss reads the tap of the forward pass just run). It pickles
to the simulation's worker processes with the teacher, if any (the teacher goes to the
devices only with ``shape.distill.teacher_to_devices=true``, checked by
:mod:`fedge.conf.shaping`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fedge.tasks.base import FederatedTask, TaskData
from fedge.tasks.shaping.distillation import FeatureTap, Teacher, annealed_alpha, attention_loss, distillation_loss
from fedge.tasks.shaping.keep_zeros import keep_zeros
from fedge.tasks.shaping.lowrank import LowRankConfig, factorise


class ShapedTask(FederatedTask):
    """``base`` with a shaped model (see the module docstring).

    ``ranks``: layer name -> rank to factorise at ({} = none); ``prune``: devices keep the
    zeros of the weights they receive; ``teacher``, ``temperature``, ``alpha``: distil;
    ``feature_weight`` > 0 adds the attention-transfer hint at the teacher's tapped layer
    (the same module name in the student); ``anneal_rounds`` >= 2 moves ``alpha`` to
    ``alpha_end`` over the rounds (:func:`~fedge.tasks.shaping.distillation.annealed_alpha`,
    set by :meth:`begin_round`), the hint's weight by the same factor.
    """

    def __init__(
        self,
        base: FederatedTask,
        ranks: Mapping[str, int] | None = None,
        prune: bool = False,
        teacher: Teacher | None = None,
        temperature: float = 4.0,
        alpha: float = 0.5,
        feature_weight: float = 0.0,
        alpha_end: float = 0.0,
        anneal_rounds: int = 0,
    ) -> None:
        self.base = base
        self.name = base.name
        self.num_classes = base.num_classes
        self.ranks = dict(ranks or {})
        self.prune = prune
        self.teacher = teacher
        self.temperature, self.alpha = temperature, alpha
        self.feature_weight = feature_weight
        self.alpha_start, self.alpha_end, self.anneal_rounds = alpha, alpha_end, anneal_rounds
        self.feature_weight_start = feature_weight
        annealed_alpha(alpha, alpha_end, anneal_rounds, 1)  # refuses a bad anneal_rounds here, not in a round
        self.tap: FeatureTap | None = None
        if feature_weight > 0:
            if teacher is None or teacher.tap is None:
                raise ValueError("feature_weight > 0 needs a teacher tapping a layer")
            self.tap = FeatureTap(teacher.tap.layer)

    def load(self) -> TaskData:
        return self.base.load()

    def build_model(self) -> nn.Module:
        model = self.base.build_model()
        if self.ranks:
            factorise(model, LowRankConfig(), self.ranks)
        if self.tap is not None:
            self.tap.attach(model)
        return keep_zeros(model) if self.prune else model

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base.loss(logits, target)

    def begin_round(self, server_round: int) -> None:
        """Set this round's ``alpha`` and hint weight (annealed; unchanged without annealing)."""
        self.base.begin_round(server_round)
        if not self.anneal_rounds:
            return
        alpha = annealed_alpha(self.alpha_start, self.alpha_end, self.anneal_rounds, server_round)
        self.alpha = alpha
        if self.alpha_start > 0:
            self.feature_weight = self.feature_weight_start * alpha / self.alpha_start

    def training_loss(self, logits: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.base.training_loss(logits, target, inputs)
        loss = distillation_loss(logits, self.teacher.logits(inputs), target, self.temperature, self.alpha)
        if self.tap is not None:
            loss = loss + self.feature_weight * attention_loss(self.tap.take(), self.teacher.features())
        return loss
