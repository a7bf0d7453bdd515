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


def har_cnn(channels: int = 6, num_classes: int = 7, width: int = 16) -> Sequential:
    """Three 1-D conv blocks, global average pooling, one linear layer.

    Input ``(N, channels, T)`` standardised sensor windows; output ``(N, num_classes)``
    logits. Works for any ``T >= 8``. With ``channels=6, width=16, num_classes=7``:
    6,423 parameters.
    """
    return Sequential.named(
        features=Sequential.of(
            Conv1d(channels, width, 5, padding=2), ReLU(), MaxPool1d(2),
            Conv1d(width, 2 * width, 5, padding=2), ReLU(), MaxPool1d(2),
            Conv1d(2 * width, 2 * width, 3, padding=1), ReLU(), AdaptiveAvgPool1d(1),
        ),
        classifier=Sequential.of(Flatten(), Linear(2 * width, num_classes)),
    )


def windows(series: np.ndarray, window: int, stride: int) -> np.ndarray:
    """``(T, C)`` series -> ``(W, C, window)`` windows starting every ``stride`` steps."""
    if len(series) < window:
        return np.empty((0, series.shape[1], window), dtype=series.dtype)
    return np.stack([series[s : s + window].T for s in range(0, len(series) - window + 1, stride)])


class HarTask(FederatedTask):
    """Shoulder-exercise recognition (7 classes) from 2 s smartwatch IMU windows."""

    name = "har"
    num_classes = len(EXERCISES)

    def __init__(self, window: int = 100, stride: int = 50, test_fraction: float = 0.2, width: int = 16) -> None:
        if window < 8:
            raise ValueError(f"window must be >= 8 time steps, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        check_fraction("test_fraction", test_fraction)
        self.window = window
        self.stride = stride
        self.input_shape = (len(CHANNEL_MEAN), window)  # (channels, time steps)
        self.test_fraction = test_fraction
        self.width = width

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
        return har_cnn(len(CHANNEL_MEAN), self.num_classes, self.width)
