"""A LocalGrid whose chosen devices lie: they train honestly, then rewrite their Update.

The rewritten Update bytes go through the same path as every reply (FedgeGrid ->
update_to_reply -> CompressedStrategy -> a real Flower strategy inside Flower's
``Strategy.start`` loop), so the tests exercise the validator where it runs in fedge-sim.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedge.client import TrainConfig
from fedge.protos.codecs import decode_update, encode_update
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.broadcast import SplitTask
from fedge.simulations.local_grid import LocalGrid
from fedge.tasks.digits import DigitsTask

TASK = DigitsTask()
DATA = TASK.load()
TRAIN = TrainConfig(local_steps=2)
#: An attack: (the round's Task, the honest Update) -> the Update sent, or None (no reply).
Attack = Callable[[task_pb2.Task, task_pb2.Update], task_pb2.Update | None]


def honest_update(answer: bytes | task_pb2.Update) -> task_pb2.Update:
    """A copy of the Update in a LocalGrid answer, to rewrite: bytes from a worker process,
    the client's Update object itself when clients run in the calling process."""
    update = task_pb2.Update()
    if isinstance(answer, task_pb2.Update):
        update.CopyFrom(answer)
    else:
        update.ParseFromString(answer)
    return update


class HostileGrid(LocalGrid):
    """In-process clients; ``attacks[node]`` rewrites that node's Updates for tasks of
    ``kind`` (train or evaluate) from round ``start_round`` on."""

    def __init__(self, recipe: ClientRecipe, attacks: dict[int, Attack], start_round: int = 1, kind: str = "train") -> None:
        super().__init__(recipe)
        self.attacks = attacks
        self.start_round = start_round
        self.kind = kind

    def _deliver(self, tasks: Sequence[tuple[int, SplitTask]]) -> list[bytes | None]:
        answers = super()._deliver(tasks)
        for position, (node, payload) in enumerate(tasks):
            task = payload.task()  # a SplitTask (fedge.simulations.broadcast)
            attack = self.attacks.get(node)
            if attack is None or task.kind != self.kind or task.server_round < self.start_round or answers[position] is None:
                continue
            sent = attack(task, honest_update(answers[position]))
            answers[position] = None if sent is None else sent.SerializeToString()
        return answers


def setup(clients: int = 3, seed: int = 0) -> tuple[ClientRecipe, ArrayRecord, CentralEvaluator, list[int]]:
    """A digits federation of ``clients`` unequal partitions; the same state for every call."""
    random.seed(seed)
    np.random.seed(seed)
    order = np.random.default_rng(seed).permutation(len(DATA.train))
    parts = np.array_split(order[: 200 * clients], clients)
    recipe = ClientRecipe(TASK, {node_id_of(i): p for i, p in enumerate(parts)}, TRAIN, seed)
    torch.manual_seed(seed)
    initial = ArrayRecord(TASK.build_model().state_dict())
    return recipe, initial, CentralEvaluator(TASK, DATA.test), [len(p) for p in parts]


def train_config() -> ConfigRecord:
    return ConfigRecord(TRAIN.to_config())


# -- attacks -------------------------------------------------------------------
def set_metric(key: str, value: float) -> Attack:
    def attack(task: task_pb2.Task, update: task_pb2.Update) -> task_pb2.Update:
        update.metrics[key] = value
        return update

    return attack


def drop_metric(key: str) -> Attack:
    def attack(task: task_pb2.Task, update: task_pb2.Update) -> task_pb2.Update:
        del update.metrics[key]
        return update

    return attack


def fill_update(value: float) -> Attack:
    """Replace the delta by one holding ``value`` everywhere (same names, shapes, dtypes)."""

    def attack(task: task_pb2.Task, update: task_pb2.Update) -> task_pb2.Update:
        delta = decode_update(update.update)
        forged = {k: np.full_like(v, value) if np.issubdtype(v.dtype, np.floating) else v for k, v in delta.items()}
        update.update.CopyFrom(encode_update(forged, "fp32", tensor_pb2.UPDATE_KIND_DELTA, base_round=task.server_round - 1))
        return update

    return attack


def silent(task: task_pb2.Task, update: task_pb2.Update) -> None:
    """No reply at all: what the federation looks like without this device."""
    return None


def weights(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def same_model(a: ArrayRecord, b: ArrayRecord) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def finite_model(a: ArrayRecord) -> bool:
    return all(np.isfinite(v).all() for v in weights(a).values() if np.issubdtype(v.dtype, np.floating))
