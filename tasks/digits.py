"""``digits``: scikit-learn's handwritten digits with a small CNN.

Source: ``sklearn.datasets.load_digits`` (ships inside the scikit-learn wheel, BSD-3),
1,797 grey images of 8x8 pixels (values 0..16), 10 classes, no writer ids. A seeded,
stratified ``test_fraction`` is held out for central evaluation. Pixels are scaled to
[0, 1] and standardised with the dataset's mean and standard deviation.

The file and the split are scikit-learn's, read and drawn by
:mod:`fedge.tasks.sklearn_free` without importing scikit-learn (start-up).
"""

from __future__ import annotations

import numpy as np

from fedge.tasks.base import FederatedTask, Split, TaskData, check_fraction
from fedge.tasks.layer_spec import Sequential
from fedge.tasks.models import edge_mobilenet, small_cnn
from fedge.tasks.sklearn_free import digits_csv, stratified_split

#: Models ``task.model`` may name: the small CNN or the deep MobileNet-style net.
MODEL_KINDS = ("cnn", "mobilenet")


#: Mean and standard deviation of all pixels after scaling to [0, 1].
PIXEL_MEAN, PIXEL_STD = 0.3054, 0.3761


def digits_cnn(num_classes: int = 10, width: int = 16, hidden: int = 64) -> Sequential:
    """Two 3x3 conv layers and two linear layers for (N, 1, 8, 8) inputs; ~38k weights."""
    return small_cnn((1, 8, 8), num_classes, width, kernel_size=3, pools=1, hidden=hidden)


class DigitsTask(FederatedTask):
    """8x8 handwritten digits, 10 classes."""

    name = "digits"
    num_classes = 10
    input_shape = (1, 8, 8)  # one example (C, H, W), as the model takes it

    def __init__(
        self, test_fraction: float = 0.2, seed: int = 0, width: int = 16, model: str = "cnn", hidden: int = 64
    ) -> None:
        """``width``: channels of the first conv layer; ``hidden``: units of the CNN's first linear
        layer (most of a CNN's parameters sit in it: a small student keeps more channels with a
        smaller ``hidden``)."""
        check_fraction("test_fraction", test_fraction)
        for key, value in (("width", width), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        if model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {model!r}")
        self.model = model
        self.test_fraction = test_fraction
        self.seed = seed
        self.width = width
        self.hidden = hidden

    def load(self) -> TaskData:
        x, y = self.images()
        train, test = stratified_split(y, self.test_fraction, self.seed)  # train_test_split(stratify=y)
        return TaskData(train=Split(x[train], y[train]), test=Split(x[test], y[test]))

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """All standardised images ``(N, 1, H, W)`` float32 and their labels ``(N,)`` int64."""
        images, target = digits_csv()  # load_digits()'s images and target
        x = ((images.astype(np.float32) / 16.0 - PIXEL_MEAN) / PIXEL_STD)[:, None, :, :]
        return x, target.astype(np.int64)

    def model_spec(self) -> Sequential:
        if self.model == "mobilenet":
            return edge_mobilenet(self.input_shape, self.num_classes, self.width)
        return digits_cnn(self.num_classes, self.width, self.hidden)
