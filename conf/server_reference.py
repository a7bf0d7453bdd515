"""The server's reference update for FLTrust (:mod:`fedge.strategies.fltrust`), built from the task.

Strategies import no task and no torch, so the callable that trains the global model on the
server's root dataset is built here and attached to the strategy, the same way for
``fedge-sim`` and ``fedge-server``. The root dataset: ``strategy.root_examples`` examples
drawn without replacement, seeded by ``seed``, from the task's **training pool** (the data
devices are partitioned from), never from its test split, on which central accuracy is
measured. One reference round = one local round of the devices' own ``client.*`` settings
(optimiser, batch size, epochs or steps, frozen tensors), batch order seeded by
``(seed, round)``, torch's global random stream left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.client.train_config import TrainConfig
from fedge.conf.build import ConfigError
from fedge.strategies.compressed import CompressedStrategy
from fedge.strategies.fltrust import FLTrust, ReferenceUpdate
from fedge.tasks.base import FederatedTask, Split

#: Mixed into the seed of the root-dataset draw (so it is not the partitioner's stream).
ROOT_DRAW = 0x5EED_F17


def root_dataset(train: Split, size: int, seed: int) -> Split:
    """``size`` examples of the training pool ``train``, drawn without replacement by ``seed``."""
    if size > len(train):
        raise ConfigError(f"strategy.root_examples={size} exceeds the task's training pool ({len(train)} examples)")
    rng = np.random.default_rng([ROOT_DRAW, seed])
    return train.subset(np.sort(rng.choice(len(train), size=size, replace=False)))


def reference_update(task: FederatedTask, root: Split, train_cfg: TrainConfig, seed: int) -> ReferenceUpdate:
    """``reference(global_model, server_round)``: the global model after one local round on ``root``."""

    def reference(global_model: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        import torch

        from fedge.client.freezing import freeze_parameters
        from fedge.client.model_io import load_arrays, model_arrays
        from fedge.client.training import train
        from fedge.protos.frozen_tensors import frozen_names

        arrays = dict(global_model)
        with torch.random.fork_rng():  # model building and dropout draw from torch's stream: keep the run's intact
            torch.manual_seed(seed * 100_003 + server_round)
            model = task.build_model()
            load_arrays(model, arrays)
            freeze_parameters(model, set(frozen_names(arrays, train_cfg.freeze, train_cfg.trainable)))
            train(model, task, root, train_cfg, np.random.default_rng([ROOT_DRAW, seed, server_round]))
        return model_arrays(model)

    return reference


def attach_server_reference(strategy: CompressedStrategy, task: FederatedTask, train: Split, train_cfg: TrainConfig, seed: int) -> None:
    """Give an FLTrust strategy (the one ``strategy`` wraps) its reference update; others: nothing."""
    inner = strategy.strategy
    if isinstance(inner, FLTrust):
        inner.use_reference(reference_update(task, root_dataset(train, inner.root_examples, seed), train_cfg, seed))
