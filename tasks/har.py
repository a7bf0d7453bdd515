"""``har``: smartwatch exercise recognition from 6-axis inertial data, a 1-D CNN per subject.

Source: the ``watch`` dataset that ships inside the seglearn wheel
(``seglearn.datasets.load_watch``, seglearn 1.2.5, BSD-3 licence, file
``seglearn/data/watch_dataset.npy``, 18 MB; Burns et al., "Shoulder physiotherapy
exercise recognition: machine learning the inertial signals from a smartwatch",
Physiological Measurement 2018, arXiv:1802.01489). 140 recordings from 10 subjects
wearing a smartwatch, each a set of shoulder-exercise repetitions: 7 exercises
(PEN, ABD, FEL, IR, ER, TRAP, ROW) x left/right arm x 10 subjects, 947..2,618 time
steps each (244,102 in all, 81 minutes), 6 channels sampled at 50 Hz (accelerometer
``ax, ay, az`` in g, gyroscope ``wx, wy, wz`` in rad/s).

Examples are windows of ``window`` steps (default 100 = 2 s) taken every ``stride``
steps. The held-out central test split is the last ``test_fraction`` of every
recording in time (windows never straddle the cut), so every subject and exercise is
in both splits and no test window overlaps a training window. With the defaults:
3,693 training and 770 test windows of shape ``(6, 100)``. ``groups`` is the subject
id (1..10) of each training window: natural clients, one per subject
(``partition=natural num_clients=10``), non-IID in how each person moves.
Channels are standardised with the dataset-wide mean and standard deviation below.

Model: :func:`har_cnn`, a 1-D CNN sized for a microcontroller-class device
(Cortex-M4 / M7 with 256 KB SRAM): 6,423 parameters, 25.7 KB as float32 (6.4 KB as
int8); the largest activation of one window is 16 x 100 floats (6.4 KB).
"""

from __future__ import annotations

import numpy as np

from fedge.tasks.base import FederatedTask, Split, TaskData, check_fraction
from fedge.tasks.layer_spec import AdaptiveAvgPool1d, Conv1d, Flatten, Linear, MaxPool1d, ReLU, Sequential

#: Per-channel mean and standard deviation over all 244,102 steps (ax, ay, az, wx, wy, wz).
CHANNEL_MEAN = np.array([-0.0076, 0.3794, -0.147, 0.0253, -0.0015, 0.0118], dtype=np.float32)
CHANNEL_STD = np.array([0.9033, 0.4936, 0.5381, 0.9817, 2.4961, 1.0522], dtype=np.float32)
EXERCISES = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
SAMPLE_RATE_HZ = 50


def har_cnn(channels: int = 6, num_classes: int = 7, width: int = 16, depth: int = 3, kernel: int = 5) -> Sequential:
    """``depth`` 1-D conv blocks, global average pooling, one linear layer.

    Input ``(N, channels, T)`` standardised sensor windows; output ``(N, num_classes)``
    logits. Block 1 has ``width`` output channels, later blocks ``2 * width``; every
    block but the last uses ``kernel`` taps and ends in a max-pool halving time, the
    last uses 3 taps and global average pooling. Works for any ``T >= 2 ** depth``.
    The defaults (``width=16, depth=3, kernel=5``, 6 channels, 7 classes): 6,423
    parameters. Tuning: ``width`` scales parameters ~quadratically and MACs too;
    ``depth`` adds a ``2 * width``-channel block (~``12 * width**2 * kernel`` parameters);
    ``kernel`` widens the receptive field linearly in parameters.
    """
    check_har_shape(width, depth, kernel)
    blocks: list = []
    in_channels = channels
    for block in range(depth):
        out_channels = width if block == 0 else 2 * width
        last = block == depth - 1
        taps = 3 if last else kernel
        blocks += [Conv1d(in_channels, out_channels, taps, padding=taps // 2), ReLU(),
                   AdaptiveAvgPool1d(1) if last else MaxPool1d(2)]
        in_channels = out_channels
    return Sequential.named(
        features=Sequential.of(*blocks),
        classifier=Sequential.of(Flatten(), Linear(in_channels, num_classes)),
    )


def check_har_shape(width: int, depth: int, kernel: int) -> None:
    """Refuse a har CNN shape that cannot be built, naming the key (``task.<key>``)."""
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if not (isinstance(depth, int) and 2 <= depth <= 6):
        raise ValueError(f"depth must be an integer in [2, 6] (conv blocks), got {depth!r}")
    if not (isinstance(kernel, int) and kernel >= 1 and kernel % 2 == 1):
        raise ValueError(f"kernel must be an odd integer >= 1 (taps, padded to keep the length), got {kernel!r}")


def windows(series: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``(T, C)`` series -> ``(W, C, window)`` windows starting every ``stride`` steps."""
    if len(series) < window:
        return np.empty((0, series.shape[1], window), dtype=series.dtype)
    return np.stack([series[s : s + window].T for s in range(0, len(series) - window + 1, stride)])


class HarTask(FederatedTask):
    """Shoulder-exercise recognition (7 classes) from 2 s smartwatch IMU windows."""

    name = "har"
    num_classes = len(EXERCISES)

    def __init__(self, window: int = 100, stride: int = 50, test_fraction: float = 0.2, width: int = 16,
                 depth: int = 3, kernel: int = 5) -> None:
        check_har_shape(width, depth, kernel)
        if window < max(8, 2 ** depth):
            raise ValueError(f"window must be >= max(8, 2 ** depth) = {max(8, 2 ** depth)} time steps, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        check_fraction("test_fraction", test_fraction)
        self.window = window
        self.stride = stride
        self.input_shape = (len(CHANNEL_MEAN), window)  # (channels, time steps)
        self.test_fraction = test_fraction
        self.width = width
        self.depth = depth
        self.kernel = kernel

    def load(self) -> TaskData:
        try:
            from seglearn.datasets import load_watch
        except ImportError as exc:
            raise ImportError("task har reads seglearn's watch dataset: pip install 'fedge[datasets]'") from exc

        data = load_watch()
        train_x, train_y, train_g, test_x, test_y = [], [], [], [], []
        for series, label, subject in zip(data["X"], data["y"], data["subject"]):
            series = ((np.asarray(series, dtype=np.float32) - CHANNEL_MEAN) / CHANNEL_STD).astype(np.float32)
            cut = int(round(len(series) * (1.0 - self.test_fraction)))
            head = windows(series[:cut], self.window, self.stride)
            tail = windows(series[cut:], self.window, self.stride)
            train_x.append(head)
            train_y.append(np.full(len(head), label, dtype=np.int64))
            train_g.append(np.full(len(head), subject, dtype=np.int64))
            test_x.append(tail)
            test_y.append(np.full(len(tail), label, dtype=np.int64))
        train = Split(np.concatenate(train_x).astype(np.float32), np.concatenate(train_y))
        test = Split(np.concatenate(test_x).astype(np.float32), np.concatenate(test_y))
        if len(test) == 0:
            raise ValueError(f"test_fraction={self.test_fraction} leaves no test window of {self.window} steps")
        return TaskData(train=train, test=test, groups=np.concatenate(train_g))

    def model_spec(self) -> Sequential:
        return har_cnn(len(CHANNEL_MEAN), self.num_classes, self.width, self.depth, self.kernel)
