"""A picklable recipe for the simulated devices, built once per worker process.

The clients of one process share one training runtime per runtime kind (one model and
its gradients, whatever the number of clients: every round loads the broadcast into it
before training, so sharing changes no number). A client keeps only its own state
across rounds (data, error-feedback residuals, the model held for downlink deltas);
with QAT on, each client keeps its own runtime, which carries its LSQ steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedge.client import EdgeClient, TrainConfig
from fedge.client.trainer import Trainer, make_trainer
from fedge.conf.schema import AttackConfig
from fedge.simulations.attacks import Attack, Coalition
from fedge.tasks.base import FederatedTask, TaskData
from fedge.tasks.custom import data_digest, describe_task

#: Seed stream of the runtime assignment (apart from the device-profile assignment's).
RUNTIME_STREAM = 18

#: Node id of partition ``i`` is ``NODE_ID_BASE + i`` (Flower reserves small ids).
NODE_ID_BASE = 1000
#: Training data the caller already loaded travels to worker processes with the recipe
#: up to this many bytes (a worker then neither imports the task's data library nor
#: loads the data again); larger data each worker loads itself.
SHIP_DATA_BYTES = 64 << 20


def node_id_of(partition: int) -> int:
    """The node id a simulation gives to the client holding ``partition``."""
    return NODE_ID_BASE + partition


@dataclass
class ClientRecipe:
    """How to build each simulated EdgeClient: task, partition indices, defaults.

    Sent to worker processes (it pickles small: indices, and the task's data if
    :meth:`use_data` gave data of at most ``SHIP_DATA_BYTES``); each process loads the
    task's data at most once and builds its clients lazily, keeping them (and the
    state they carry across rounds) for the whole run.
    """

    task: FederatedTask
    partitions: Mapping[int, np.ndarray]  # node id -> indices into the training pool
    defaults: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    memory_mb: Mapping[int, float] = field(default_factory=dict)  # node id -> its device profile's budget
    runtimes: Mapping[int, str] = field(default_factory=dict)  # node id -> training runtime (default: defaults.runtime)
    data_digest: str = ""  # fedge.tasks.custom.data_digest of the main process's load(); "" = unchecked
    attack: AttackConfig = field(default_factory=AttackConfig)
    attackers: frozenset[int] = frozenset()  # node ids built with an Attack (fedge.simulations.attacks)
    _coalition: Coalition = field(default_factory=Coalition, init=False, repr=False, compare=False)
    _data: TaskData | None = field(default=None, init=False, repr=False, compare=False)
    _clients: dict[int, EdgeClient] = field(default_factory=dict, init=False, repr=False, compare=False)
    _trainers: dict[str, Trainer] = field(default_factory=dict, init=False, repr=False, compare=False)

    def use_data(self, data: TaskData) -> None:
        """Use ``data`` (the result of ``task.load()``, loaded by the caller) instead of
        loading it again; it travels to workers if small."""
        self._data = data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        data = self._data
        if data is not None and sum(a.nbytes for a in (data.train.x, data.train.y, data.test.x, data.test.y)) > SHIP_DATA_BYTES:
            data = None
        state["_data"], state["_clients"], state["_trainers"], state["_coalition"] = data, {}, {}, Coalition()
        return state

    def needs_torch(self) -> bool:
        """Whether some client trains on the torch runtime."""
        return any(self.runtimes.get(node, self.defaults.runtime) == "torch" for node in self.partitions)

    def shared_trainer(self, runtime: str) -> Trainer | None:
        """This process's one runtime of kind ``runtime`` for every client, or None under
        QAT (whose learned steps are per client and live in the runtime)."""
        if self.defaults.qat.bits:
            return None
        if runtime not in self._trainers:
            self._trainers[runtime] = make_trainer(runtime, self.task, self.seed)
        return self._trainers[runtime]

    def client(self, node_id: int) -> EdgeClient:
        """The (cached) client of ``node_id``."""
        if node_id not in self._clients:
            if node_id not in self.partitions:
                raise KeyError(f"no partition for node {node_id}")
            if self._data is None:
                self._data = self.task.load()
                if self.data_digest and data_digest(self._data) != self.data_digest:
                    raise ValueError(
                        f"task {describe_task(self.task)}: load() in this process returned other data than in "
                        f"the server's process; load() must be deterministic (seed every shuffle)"
                    )
            data = self._data.train.subset(self.partitions[node_id])
            defaults = self.defaults
            if self.memory_mb.get(node_id, 0.0) > 0:  # the device's own budget (EdgeClient caps with it)
                defaults = replace(defaults, memory_mb=self.memory_mb[node_id])
            runtime = self.runtimes.get(node_id, defaults.runtime)
            tamper = None
            if node_id in self.attackers:
                brightest = float(self._data.train.x.max())
                tamper = Attack(self.attack, node_id, self.task.num_classes, self._coalition, brightest)
            self._clients[node_id] = EdgeClient(
                self.task, data, node_id, defaults, self.seed, runtime=runtime, trainer=self.shared_trainer(runtime),
                tamper=tamper,
            )
        return self._clients[node_id]


def assign_runtimes(train: TrainConfig, node_ids: Sequence[int], seed: int) -> dict[int, str]:
    """Node id -> training runtime: ``train.runtime_mix`` shares as exact counts (largest
    remainder), the rest on ``train.runtime``, dealt in a seeded shuffled order."""
    shares = {name: share for name, share in train.runtime_mix.items() if name != train.runtime}
    shares[train.runtime] = max(0.0, 1.0 - sum(shares.values()))
    from fedge.simulations.devices.fleet import profile_counts  # here: workers import this module, not the fleet's Grid hooks

    names = [name for name, count in profile_counts(shares, len(node_ids)).items() for _ in range(count)]
    order = np.random.default_rng([seed, RUNTIME_STREAM]).permutation(len(names))
    return {node: names[k] for node, k in zip(sorted(node_ids), order)}
