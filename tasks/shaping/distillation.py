"""Knowledge distillation (Hinton et al. 2015): a student's loss against a teacher's soft targets.

``loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``

``temperature`` T (2-8; higher spreads the teacher's probability over more classes,
carrying more of its "dark knowledge"); ``alpha`` in [0, 1] the share of the soft term
(0.5-0.9). The ``T^2`` keeps the soft term's gradients on the scale of the hard term's
once the student is close to the teacher; early on, a random student's soft-term
gradient per logit is up to ``alpha * T`` (the hard term's: 1), so keep ``alpha * T``
near 2 or lower the learning rate (measured in ``bench.optimize``: T 4, alpha 0.9 at
lr 0.02 sat at chance for five rounds; T 4, alpha 0.5 learned fastest).

Where it helps (``bench.optimize``): under strong label skew and a limited number of
rounds, where local training forgets the classes a device lacks and the teacher's soft
targets keep them; with mild skew a 4x smaller student from scratch is already within
~1.5 pp of its teacher, and given more rounds it catches up with the distilled one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Mean loss of a batch: student and teacher logits ``(N, classes)``, labels ``(N,)``."""
    soft = F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1), reduction="batchmean", log_target=True)
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, target)


class Teacher:
    """A frozen model giving soft targets: ``logits(x)`` without gradients, in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) -> (N, classes)."""
        return self.model(x)
