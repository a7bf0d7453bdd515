"""A picklable recipe for the simulated devices, built once per worker process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from fedge.client import EdgeClient, TrainConfig
from fedge.conf.schema import AttackConfig
from fedge.simulations.attacks import Attack, Coalition
from fedge.tasks.base import FederatedTask, TaskData

#: Node id of partition ``i`` is ``NODE_ID_BASE + i`` (Flower reserves small ids).
NODE_ID_BASE = 1000


def node_id_of(partition: int) -> int:
    """The node id a simulation gives to the client holding ``partition``."""
    return NODE_ID_BASE + partition


@dataclass
class ClientRecipe:
    """How to build each simulated EdgeClient: task, partition indices, defaults.

    Sent to worker processes (it pickles small: indices, not data); each process
    loads the task's data once and builds its clients lazily, keeping them (and the
    state they carry across rounds) for the whole run.
    """

    task: FederatedTask
    partitions: Mapping[int, np.ndarray]  # node id -> indices into the training pool
    defaults: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    memory_mb: Mapping[int, float] = field(default_factory=dict)  # node id -> its device profile's budget
    attack: AttackConfig = field(default_factory=AttackConfig)
    attackers: frozenset[int] = frozenset()  # node ids built with an Attack (fedge.simulations.attacks)
    _coalition: Coalition = field(default_factory=Coalition, init=False, repr=False, compare=False)
    _data: TaskData | None = field(default=None, init=False, repr=False, compare=False)
    _clients: dict[int, EdgeClient] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"], state["_clients"], state["_coalition"] = None, {}, Coalition()
        return state

    def client(self, node_id: int) -> EdgeClient:
        """The (cached) client of ``node_id``."""
        if node_id not in self._clients:
            if node_id not in self.partitions:
                raise KeyError(f"no partition for node {node_id}")
            if self._data is None:
                self._data = self.task.load()
            data = self._data.train.subset(self.partitions[node_id])
            defaults = self.defaults
            if self.memory_mb.get(node_id, 0.0) > 0:  # the device's own budget (EdgeClient caps with it)
                defaults = replace(defaults, memory_mb=self.memory_mb[node_id])
            tamper = None
            if node_id in self.attackers:
                brightest = float(self._data.train.x.max())
                tamper = Attack(self.attack, node_id, self.task.num_classes, self._coalition, brightest)
            self._clients[node_id] = EdgeClient(self.task, data, node_id, defaults, self.seed, tamper)
        return self._clients[node_id]
