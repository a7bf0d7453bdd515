"""A real training update to measure codecs on: one local epoch of the digits CNN from a seeded start.

Used by ``bench.compression`` (index coding of real top-k sets) and by
``tests/test_codecs.py`` (the same bound, asserted): one copy, so the bench and the
test measure the same kind of update.
"""

from __future__ import annotations

import numpy as np
import torch

from fedge.client import TrainConfig
from fedge.client.model_io import model_arrays
from fedge.client.training import train
from fedge.tasks.digits import DigitsTask


def digits_training_delta(examples: int, width: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """``after - before`` per state name (float32 arrays of each tensor's shape) of one local epoch.

    The model is ``DigitsTask(width=width)``'s CNN, initialised with ``torch.manual_seed(seed)``
    and trained on the first ``examples`` training images (batch order from ``seed``).
    """
    task = DigitsTask(width=width)
    data = task.load()
    torch.manual_seed(seed)
    model = task.build_model()
    before = model_arrays(model)
    train(model, task, data.train.subset(np.arange(examples)), TrainConfig(local_epochs=1), np.random.default_rng(seed))
    after = model_arrays(model)
    return {name: after[name] - before[name] for name in before}
