"""The attack library of ``fedge-sim``: adversarial devices, chosen by seed (``attack=``).

An attacker is an ordinary simulated :class:`~fedge.client.EdgeClient` built with an
:class:`Attack` as its :class:`~fedge.client.tamper.UpdateTamper`: it trains on its own
partition, and its lie goes through the same codec, error feedback, wire and server-side
validation as an honest update. ``attack.fraction`` of the devices (rounded, at least
one when > 0) are attackers, drawn with ``attack.seed`` (default: the run's seed); they
attack from ``attack.start_round`` on and behave honestly before.

Kinds (``attack.name``; ``conf/attack/*.yaml``):

* model poisoning, on the delta ``d`` a device computed honestly:
  ``signflip`` (``-scale x d``), ``scaling`` (model replacement, ``scale x d``),
  ``noise`` (``d + N(0, noise_std^2)`` per coordinate), ``alie`` ("a little is enough",
  Baruch et al. 2019: ``mu - z x sigma`` per coordinate), ``ipm`` (inner-product
  manipulation, Xie et al. 2020: ``-epsilon x mu``). ALIE and IPM need the honest mean
  ``mu`` and std ``sigma``; as in the papers they estimate them from the coalition's own
  *benign* updates: each attacker's latest honest delta, shared among the attackers of
  one process (``backend.num_workers=0`` puts every attacker in one; with several worker
  processes each estimates from the attackers it shares a process with, its own at least);
* data poisoning: ``labelflip`` (label ``y`` trained as ``C - 1 - y``) and ``backdoor``
  (``poison_fraction`` of the device's examples get a ``trigger_size`` square of the
  data's brightest value in the bottom-right corner and the label ``target_label``); the
  backdoor's success rate (triggered test inputs of other classes classified as the
  target) is measured every round by :class:`fedge.simulations.backdoor.BackdoorEvaluator`;
* metadata lies: ``metadata`` reports ``num-examples = num_examples`` (1e12, 0, -1, nan:
  the validator caps the first and drops the others).

Written here: Flower ships robust strategies but no attacks, and the attacks must run
inside fedge's device (codec, error feedback) to be the attacks a server really sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedge.conf.schema import DATA_ATTACKS, MODEL_ATTACKS, AttackConfig
from fedge.tasks.base import Split


def choose_attackers(node_ids: list[int], settings: AttackConfig, run_seed: int) -> list[int]:
    """The attacking nodes: ``round(fraction x n)`` (at least 1 when ``fraction > 0``), seeded."""
    if not settings.active:
        return []
    count = min(len(node_ids) - 1, max(1, round(settings.fraction * len(node_ids))))
    seed = run_seed if settings.seed < 0 else settings.seed
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(n) for n in rng.choice(sorted(node_ids), size=count, replace=False))


def stamp_trigger(x: np.ndarray, size: int, value: float) -> np.ndarray:
    """``x`` ``(N, C, H, W)`` with a ``size x size`` square of ``value`` in the bottom-right corner."""
    stamped = np.array(x, copy=True)
    stamped[..., -size:, -size:] = value
    return stamped


@dataclass
class Coalition:
    """The attackers of one process: each one's latest benign delta (ALIE/IPM estimates)."""

    benign: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def moments(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-coordinate mean and std of the coalition's benign deltas."""
        deltas = list(self.benign.values())
        mean = {k: np.mean([d[k] for d in deltas], axis=0) for k in deltas[0]}
        std = {k: np.std([d[k] for d in deltas], axis=0) for k in deltas[0]}
        return mean, std


class Attack:
    """One attacking device's tamper (:class:`~fedge.client.tamper.UpdateTamper`)."""

    def __init__(self, settings: AttackConfig, node_id: int, num_classes: int, coalition: Coalition, brightest: float) -> None:
        self.settings, self.node_id, self.num_classes = settings, node_id, num_classes
        self.coalition, self.brightest = coalition, brightest
        self._poisoned: Split | None = None

    def _attacking(self, server_round: int) -> bool:
        return server_round >= self.settings.start_round

    def training_data(self, data: Split, server_round: int) -> Split:
        if self.settings.name not in DATA_ATTACKS or not self._attacking(server_round):
            return data
        if self._poisoned is None:
            self._poisoned = self._poison(data)
        return self._poisoned

    def _poison(self, data: Split) -> Split:
        s = self.settings
        if s.name == "labelflip":
            return Split(data.x, (self.num_classes - 1 - data.y).astype(data.y.dtype))
        rng = np.random.default_rng([self.node_id, 0xBAD])
        chosen = rng.random(len(data)) < s.poison_fraction
        x, y = np.array(data.x, copy=True), np.array(data.y, copy=True)
        x[chosen] = stamp_trigger(x[chosen], s.trigger_size, self.brightest)
        y[chosen] = s.target_label
        return Split(x, y)

    def update(self, delta: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        s = self.settings
        if s.name in ("alie", "ipm"):
            self.coalition.benign[self.node_id] = delta
        if s.name not in MODEL_ATTACKS or not self._attacking(server_round):
            return delta
        if s.name == "signflip":
            return {k: (-s.scale * v).astype(v.dtype) for k, v in delta.items()}
        if s.name == "scaling":
            return {k: (s.scale * v).astype(v.dtype) for k, v in delta.items()}
        if s.name == "noise":
            rng = np.random.default_rng([self.node_id, server_round, 0x7015E])
            return {k: (v + rng.normal(0.0, s.noise_std, v.shape)).astype(v.dtype) for k, v in delta.items()}
        mean, std = self.coalition.moments()
        if s.name == "alie":
            return {k: (mean[k] - s.z * std[k]).astype(v.dtype) for k, v in delta.items()}
        return {k: (-s.epsilon * mean[k]).astype(v.dtype) for k, v in delta.items()}  # ipm

    def metrics(self, metrics: dict[str, float], server_round: int) -> dict[str, float]:
        if self.settings.name != "metadata" or not self._attacking(server_round):
            return metrics
        return {**metrics, "num-examples": float(self.settings.num_examples)}
