"""BackdoorEvaluator: central evaluation plus the backdoor's success rate (``attack=backdoor``).

The trigger is :func:`fedge.simulations.attacks.stamp_trigger`'s, the one the attacking
devices train with.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from fedge.conf.schema import AttackConfig
from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.attacks import stamp_trigger
from fedge.tasks.base import FederatedTask, Split


class BackdoorEvaluator(CentralEvaluator):
    """Central evaluation that also measures the backdoor's success rate every round.

    Success rate: among test inputs whose label is not ``target_label``, the fraction
    classified as ``target_label`` once the trigger is stamped on; in [0, 1], one value
    per evaluation in :attr:`success_rates` (round 0 = the initial model).
    """

    def __init__(self, task: FederatedTask, test: Split, settings: AttackConfig, brightest: float, seed: int = 0) -> None:
        super().__init__(task, test, seed)
        others = test.y != settings.target_label
        self.triggered = stamp_trigger(test.x[others], settings.trigger_size, brightest)
        self.target = settings.target_label
        self.success_rates: list[float] = []

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        loss, accuracy = super().__call__(arrays)  # loads the weights into self.model
        self.model.eval()
        hits = 0
        with torch.no_grad():
            for start in range(0, len(self.triggered), 512):
                logits = self.model(torch.from_numpy(self.triggered[start : start + 512]))
                hits += int((logits.argmax(dim=1) == self.target).sum())
        self.success_rates.append(hits / max(len(self.triggered), 1))
        return loss, accuracy
