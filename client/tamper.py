"""UpdateTamper: the hook a simulated adversarial device uses to lie (simulation only).

An :class:`~fedge.client.EdgeClient` built with a tamper calls it at three points of a
training round, so an attacker is an ordinary device whose lies still pass through the
same codec, error feedback and wire as an honest device's update:

* :meth:`UpdateTamper.training_data`: the examples it trains on (data poisoning);
* :meth:`UpdateTamper.update`: the model delta before encoding (model poisoning);
* :meth:`UpdateTamper.metrics`: the metrics it reports (metadata lies, ``num-examples``).

Implementations live in :mod:`fedge.simulations.attacks`; real devices never set one.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from fedge.tasks.base import Split


class UpdateTamper(Protocol):
    """What an adversarial device changes in a training round ``server_round``."""

    def training_data(self, data: Split, server_round: int) -> Split: ...

    def update(self, delta: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]: ...

    def metrics(self, metrics: dict[str, float], server_round: int) -> dict[str, float]: ...
