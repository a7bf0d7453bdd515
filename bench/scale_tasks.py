"""Tasks of the scale benchmark (:mod:`bench.scale`), loaded with ``task=custom``.

* :class:`TiledDigits`: sklearn's digits with the training pool repeated ``copies``
  times, each copy with its own seeded pixel noise (std ``noise``), so 10,000 clients
  each get examples (the real pool has 1,437); the digits CNN (38,282 weights).
* :class:`ImageLogReg`: the ``image`` task (the 5,000-image MNIST sample) with a
  logistic-regression model (784 -> 10, 7,850 weights): FLUTE's LR/MNIST protocol.
"""

from __future__ import annotations

import numpy as np

from fedge.tasks.base import Split, TaskData
from fedge.tasks.digits import DigitsTask
from fedge.tasks.image import SIDE, ImageTask
from fedge.tasks.layer_spec import Flatten, Linear, Sequential


class TiledDigits(DigitsTask):
    """Digits with ``copies`` noisy copies of the training pool (the test split as is)."""

    def __init__(self, copies: int = 8, noise: float = 0.1, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.copies, self.noise = copies, noise

    def load(self) -> TaskData:
        data = super().load()
        rng = np.random.default_rng([self.seed, 1])
        x = np.concatenate([data.train.x + rng.normal(0, self.noise, data.train.x.shape).astype(np.float32)
                            for _ in range(self.copies)])
        return TaskData(Split(x, np.tile(data.train.y, self.copies)), data.test)


class ImageLogReg(ImageTask):
    """MNIST sample with multinomial logistic regression (FLUTE's LR baseline)."""

    def model_spec(self) -> Sequential:
        return Sequential.of(Flatten(), Linear(SIDE * SIDE, self.num_classes))
