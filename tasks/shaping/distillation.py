"""Knowledge distillation (Hinton et al. 2015): a student's loss against a teacher's soft targets.

``loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)``

``temperature`` T (2-8; higher spreads the teacher's probability over more classes,
carrying more of its "dark knowledge"); ``alpha`` in [0, 1] the share of the soft term
(0.5-0.9). The ``T^2`` keeps the soft term's gradients on the scale of the hard term's
once the student is close to the teacher; early on, a random student's soft-term
gradient per logit is up to ``alpha * T`` (the hard term's: 1), so keep ``alpha * T``
near 2 or lower the learning rate (measured in ``bench.optimize``: T 4, alpha 0.9 at
lr 0.02 sat at chance for five rounds; T 4, alpha 0.5 learned fastest).

Intermediate features (``shape.distill.feature_weight`` > 0): attention transfer
(Zagoruyko and Komodakis 2017, "Paying More Attention to Attention"), a hint on a named
layer's output (``feature_layer``, ``features`` by default: the CNN's conv blocks) of
student and teacher: ``feature_weight * mean((a_s - a_t)^2)``, ``a = normalise(mean_c(f^2))``
the L2-normalised spatial map of each example's channel energy. It has no parameters, so
a student of any channel count learns from a teacher of another (both maps must have the
same height and width) and nothing but the student's weights travels: FitNets' learned
regressor (Romero et al. 2015) would be a second model to federate and strip at export.
The paper's weight, 1000, is too strong for a federation of small CNNs: on ``image``
(7x7 maps, lr 0.02, ``bench.optimize`` seed 0) it kept a width-4 student at chance for all
10 rounds; 20-100 trained (100 learned fastest early, 20 ended best): start near 20.

Annealing (``shape.distill.anneal_rounds`` N >= 2, ``alpha_end``): more teacher early,
more labels late. :func:`annealed_alpha` moves ``alpha`` linearly from its value at round 1
to ``alpha_end`` at round N and holds it there; the feature hint's weight follows by the
same factor (``alpha_r / alpha``). Soft targets speed a student's start but hold it near
the teacher's errors later; the labels then carry it on. Measured (``bench.optimize``,
image CNN 16 -> 8, Dirichlet 0.1, dev seeds 3-5): 0.5 -> 0.1 over 10 rounds beat constant
0.5 by 1.5, 0.9 and 5.1 pp at 10 rounds, and by 0.3, 0.8 and 0.2 pp at 15.

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


def annealed_alpha(alpha: float, alpha_end: float, anneal_rounds: int, server_round: int) -> float:
    """The soft term's share at ``server_round`` (from 1): ``alpha`` at round 1, linearly to
    ``alpha_end`` at round ``anneal_rounds``, then ``alpha_end``; ``anneal_rounds`` 0 = ``alpha`` always."""
    if anneal_rounds == 0:
        return alpha
    if anneal_rounds < 2:
        raise ValueError(f"anneal_rounds must be 0 (off) or >= 2, got {anneal_rounds}")
    done = min(max(server_round - 1, 0) / (anneal_rounds - 1), 1.0)
    return alpha + (alpha_end - alpha) * done


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): each example's channel-mean of squares, L2-normalised."""
    if features.dim() != 4:
        raise ValueError(f"attention transfer needs (N, C, H, W) features, got shape {tuple(features.shape)}")
    return F.normalize(features.pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the two attention maps (student ``(N, C_s, H, W)``, teacher ``(N, C_t, H, W)``)."""
    a_s, a_t = attention_map(student), attention_map(teacher)
    if a_s.shape != a_t.shape:
        raise ValueError(f"attention transfer: student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ in H x W")
    return (a_s - a_t).pow(2).mean()


class FeatureTap:
    """The output of one named submodule at the last forward pass of any model it is attached to."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.output: torch.Tensor | None = None

    def attach(self, model: nn.Module) -> nn.Module:
        """Hook ``model``'s submodule named ``layer`` (``ValueError`` if it has none); returns ``model``."""
        module = dict(model.named_modules()).get(self.layer)
        if module is None or module is model:
            raise ValueError(f"the model has no submodule named {self.layer!r}")
        module.register_forward_hook(self._keep)
        return model

    def _keep(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self.output = output

    def take(self) -> torch.Tensor:
        """The output of the last forward pass (then forgotten, so a stale one is never reused)."""
        out, self.output = self.output, None
        if out is None:
            raise RuntimeError(f"layer {self.layer!r} did not run in the last forward pass (a QAT or other wrapped forward?)")
        return out

    def __getstate__(self) -> dict[str, object]:
        return {"layer": self.layer, "output": None}  # to worker processes without a batch's tensor


class Teacher:
    """A frozen model giving soft targets: ``logits(x)`` without gradients, in eval mode;
    with ``layer``, :attr:`features` holds that submodule's output of the last call."""

    def __init__(self, model: nn.Module, layer: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.tap = FeatureTap(layer) if layer else None
        if self.tap is not None:
            self.tap.attach(self.model)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) -> (N, classes)."""
        return self.model(x)

    def features(self) -> torch.Tensor:
        """The tapped layer's output of the last :meth:`logits` call."""
        if self.tap is None:
            raise RuntimeError("this teacher taps no layer")
        return self.tap.take()
