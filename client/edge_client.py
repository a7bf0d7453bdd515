"""EdgeClient: the device side of a round, from a Task proto to an Update proto.

``handle(task)`` decodes the global model (checked against the device's own model),
trains with mini-batch SGD, computes ``delta = local - global``, clips it if the server
runs client-side DP, encodes it with the round's codec (with error feedback if asked)
and returns it with metrics. It never raises for a bad task: the error goes back in
``Update.error`` so the server can log it and carry on.

The broadcast may be full weights or, with downlink delta compression, a compressed
change to the model this device received last; the client keeps that model to rebuild
exactly what the server meant it to have.

The model lives in a runtime (:mod:`fedge.client.trainer`): ``torch`` (default) or
``numpy`` (no torch imported); everything else here is plain numpy and protobuf.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.client.clipping import CLIPPING_NORM_KEY, clip_update
from fedge.client.tamper import UpdateTamper
from fedge.client.train_config import TrainConfig
from fedge.client.trainer import make_trainer
from fedge.protos.frozen_tensors import frozen_names
from fedge.client.uplink import UplinkEncoder
from fedge.protos import config_values
from fedge.protos.codecs import decode_update
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.secagg import REQUEST_KEY as SECAGG_KEY
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.tasks.base import FederatedTask, Split

if TYPE_CHECKING:
    from fedge.client.secagg import SecAggDevice
    from fedge.protos.v1 import secagg_pb2

log = logging.getLogger(__name__)

TRAIN = "train"
EVALUATE = "evaluate"


class EdgeClient:
    """One device: its local data, its model, and the state it keeps across rounds.

    Parameters
    ----------
    task:
        The learning task (builds the model, defines the loss).
    data:
        The device's local examples.
    node_id:
        The device's id in the federation.
    defaults:
        Training settings used where a round's config does not set them.
    seed:
        Base seed; round ``r`` shuffles with ``(seed, node_id, r)``, so results do
        not depend on which process or machine runs the client.
    runtime:
        ``"torch"`` or ``"numpy"`` (:mod:`fedge.client.trainer`; default: ``defaults.runtime``);
        the numpy runtime refuses a model it cannot run here, naming the layer.
    tamper:
        Simulation only: an adversary's hook (:mod:`fedge.client.tamper`); None = honest.
    """

    def __init__(
        self,
        task: FederatedTask,
        data: Split,
        node_id: int,
        defaults: TrainConfig | None = None,
        seed: int = 0,
        runtime: str | None = None,
        tamper: UpdateTamper | None = None,
    ) -> None:
        self.task = task
        self.data = data
        self.node_id = node_id
        self.defaults = defaults or TrainConfig()
        self.seed = seed
        self.trainer = make_trainer(runtime or self.defaults.runtime, task, seed)
        self._reference = self.trainer.arrays()
        self.tamper = tamper
        self.uplink = UplinkEncoder()
        self.held_round: int | None = None  # round of the last training broadcast received
        self._held: dict[str, np.ndarray] | None = None
        self.secagg: SecAggDevice | None = None  # secure-aggregation state, made on first use

    @property
    def runtime(self) -> str:
        """The training runtime, ``"torch"`` or ``"numpy"``."""
        return self.trainer.runtime

    @property
    def model(self) -> Any:
        """The runtime's model (an ``nn.Module``, or a ``NumpyNetwork``)."""
        return self.trainer.model

    @property
    def qat(self) -> Any:
        """The learned LSQ steps once QAT has started (the runtime's object), else None."""
        return self.trainer.qat

    def handle(self, task: task_pb2.Task) -> task_pb2.Update:
        """Run one task and answer it; failures are reported in ``Update.error``."""
        try:
            if SECAGG_KEY in task.config and task.kind != TRAIN:  # a secure-aggregation stage
                request = _secagg_request(task.config[SECAGG_KEY].bytes_value)
                return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, secagg=self._secagg().answer(request))
            if task.kind == TRAIN:
                return self._train(task)
            if task.kind == EVALUATE:
                return self._evaluate(task)
            raise ValueError(f"unknown task kind {task.kind!r} (expected 'train' or 'evaluate')")
        except Exception as exc:  # report, never crash the device loop
            log.warning("node %d: task %s failed: %s", self.node_id, task.task_id, exc)
            return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, error=f"{type(exc).__name__}: {exc}")

    def _load_global(self, task: task_pb2.Task) -> dict[str, np.ndarray]:
        model = task.model
        if model.kind == tensor_pb2.UPDATE_KIND_DELTA:
            if self._held is None or self.held_round != model.base_round:
                raise ValueError(
                    f"broadcast is a delta from round {model.base_round}, "
                    f"this device holds round {self.held_round}"
                )
            delta = decode_update(model, self._reference, expected_kind=tensor_pb2.UPDATE_KIND_DELTA)
            weights = {k: self._held[k] + delta[k] for k in self._held}
        else:
            weights = decode_update(model, self._reference, expected_kind=tensor_pb2.UPDATE_KIND_WEIGHTS)
        self.trainer.load(weights)
        if task.kind == TRAIN:
            self._held, self.held_round = weights, task.server_round
        return weights

    def _train(self, task: task_pb2.Task) -> task_pb2.Update:
        start = time.perf_counter()
        config = config_values.from_wire(task.config)
        cfg = self._within_device_memory(self.defaults.updated_from(config))
        plan = UplinkPlan.from_config(config)
        global_weights = self._load_global(task)
        rng = np.random.default_rng([self.seed, self.node_id, task.server_round])
        round_seed = int(rng.integers(2**31))  # drawn on every runtime, so the batch order is the same
        frozen = frozen_names(global_weights, cfg.freeze, cfg.trainable)
        data = self.data if self.tamper is None else self.tamper.training_data(self.data, task.server_round)
        result = self.trainer.train(data, cfg, rng, task.server_round, frozen, round_seed)
        stats, cfg = result.stats, result.cfg
        local = self.trainer.arrays()
        # Partial update: frozen tensors are not sent (the server keeps them as they are).
        delta = {k: local[k] - global_weights[k] for k in local if k not in frozen}
        if self.tamper is not None:
            delta = self.tamper.update(delta, task.server_round)
        metrics: dict[str, float] = {}
        if CLIPPING_NORM_KEY in config:
            delta, norm = clip_update(delta, float(config[CLIPPING_NORM_KEY]))
            metrics["update_norm"] = norm
        if SECAGG_KEY in config:  # secure aggregation: the update leaves the device masked
            request = _secagg_request(config[SECAGG_KEY])
            secagg, update = self._secagg().masked_input(request, delta, stats.num_examples, rng), None
        else:
            secagg, update = None, self.uplink.encode(delta, plan, base_round=task.server_round - 1)
        metrics.update(
            {
                "num-examples": float(stats.num_examples),
                "train_loss": stats.mean_loss,
                "local_steps": float(stats.steps),
                "train_samples": float(stats.samples),  # what a device profile prices (fedge.simulations.devices.profile)
                "compute_s": stats.compute_s,
                # client.memory: autograd-saved activations (deterministic), + weights/grads/optimiser state
                "peak_activation_bytes": float(stats.peak_activation_bytes),
                "peak_train_bytes": float(stats.peak_activation_bytes + stats.param_bytes),
                "handle_s": time.perf_counter() - start,
                "batch_size": float(cfg.batch_size),
                "checkpointing": float(cfg.checkpointing),
            }
        )
        metrics.update(result.metrics)  # QAT: the learned steps, so the server can export an int8 model with them
        if self.tamper is not None:
            metrics = self.tamper.metrics(metrics, task.server_round)
        return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, update=update, secagg=secagg, metrics=metrics)

    def _secagg(self) -> SecAggDevice:
        if self.secagg is None:
            from fedge.client.secagg import SecAggDevice  # needs `cryptography` (the client extra)

            self.secagg = SecAggDevice(self.node_id)
        return self.secagg

    def _within_device_memory(self, cfg: TrainConfig) -> TrainConfig:
        """A device's own ``memory_mb`` (its profile's) is a hard cap: a round config can
        only tighten it, never lift it."""
        own = self.defaults.memory_mb
        if own > 0 and not 0 < cfg.memory_mb <= own:
            return replace(cfg, memory_mb=own)
        return cfg

    def _evaluate(self, task: task_pb2.Task) -> task_pb2.Update:
        self._load_global(task)
        loss, accuracy = self.trainer.evaluate(self.data)
        metrics = {"num-examples": float(len(self.data)), "loss": loss, "accuracy": accuracy}
        return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, metrics=metrics)


def _secagg_request(payload: object) -> secagg_pb2.SecAggRequest:
    """The serialised SecAggRequest a task's config carries (``ValueError`` if it is not one)."""
    from fedge.protos.v1 import secagg_pb2

    if not isinstance(payload, bytes):
        raise ValueError(f"{SECAGG_KEY} must hold bytes")
    return secagg_pb2.SecAggRequest.FromString(payload)
