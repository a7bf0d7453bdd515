# my_task.py: a task of your own (here synthetic data from a seeded generator)
import numpy as np
from sklearn.datasets import make_classification
from torch import nn

from fedge.tasks.base import FederatedTask, Split, TaskData


class MyTask(FederatedTask):
    name = "my_task"
    num_classes = 3
    input_shape = (20,)  # one example: 20 features

    def __init__(self, n: int = 1000, seed: int = 0) -> None:
        self.n = n  # examples in all: 80% training pool, 20% central test split
        self.seed = seed

    def load(self) -> TaskData:
        # Deterministic: the same arguments give the same arrays, in every process.
        x, y = make_classification(n_samples=self.n, n_features=20, n_informative=8,
                                   n_classes=self.num_classes, random_state=self.seed)
        x, y = x.astype(np.float32), y.astype(np.int64)
        cut = int(0.8 * self.n)
        return TaskData(train=Split(x[:cut], y[:cut]), test=Split(x[cut:], y[cut:]))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, self.num_classes))
