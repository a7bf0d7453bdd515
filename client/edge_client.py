"""EdgeClient: the device side of a round, from a Task proto to an Update proto.

``handle(task)`` decodes the global model (checked against the device's own model),
trains with mini-batch SGD, computes ``delta = local - global``, clips it if the server
runs client-side DP, encodes it with the round's codec (with error feedback if asked)
and returns it with metrics. It never raises for a bad task: the error goes back in
``Update.error`` so the server can log it and carry on.

The broadcast may be full weights or, with downlink delta compression, a compressed
change to the model this device received last; when the round's config says the server
sends such deltas (``fedge.downlink-delta``), the client keeps that model to rebuild
exactly what the server meant it to have, and otherwise keeps no copy of it.

What a client keeps between rounds is only its own state: its data, error-feedback
residuals (:class:`~fedge.client.uplink.UplinkEncoder`), the model held for downlink
deltas, LSQ steps. The model it trains may be a runtime shared with other clients of
the same process (a simulation passes ``trainer``): every round loads the broadcast
into it first, so sharing changes no number.

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
from fedge.client.round_settings import round_settings
from fedge.client.shared_broadcast import SharedBroadcast
from fedge.client.tamper import UpdateTamper
from fedge.client.train_config import TrainConfig
from fedge.client.trainer import Trainer, make_trainer
from fedge.protos.frozen_tensors import frozen_names
from fedge.client.uplink import UplinkEncoder
from fedge.protos import config_values
from fedge.protos.records import DOWNLINK_DELTA_KEY
from fedge.protos.codecs import decode_update
from fedge.protos.model_architecture import ARCHITECTURE_KEY, RESET_METRIC
from fedge.protos.secagg import REQUEST_KEY as SECAGG_KEY
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.tasks.base import FederatedTask, Split
from fedge.tasks.shaping.architecture import digest, from_json, with_architecture

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
    trainer:
        A runtime to train in, shared with other clients of this process (a simulation
        worker's one model and optimiser); default: this client's own. Not for QAT, whose
        LSQ steps live in the runtime.
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
        trainer: Trainer | None = None,
        tamper: UpdateTamper | None = None,
    ) -> None:
        self.task = task
        self.data = data
        self.node_id = node_id
        self.defaults = defaults or TrainConfig()
        self.seed = seed
        self.trainer = trainer if trainer is not None else make_trainer(runtime or self.defaults.runtime, task, seed)
        self._reference = shape_reference(self.trainer.arrays())
        self.tamper = tamper
        self.uplink = UplinkEncoder()
        self.held_round: int | None = None  # round of the last training broadcast received
        self._held: dict[str, np.ndarray] | None = None  # kept only under downlink deltas
        self.secagg: SecAggDevice | None = None  # secure-aggregation state, made on first use
        self._spec = task.model_spec()  # the model's architecture (None: a torch-only task's own)

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

    def handle(self, task: task_pb2.Task, broadcast: SharedBroadcast | None = None) -> task_pb2.Update:
        """Run one task and answer it; failures are reported in ``Update.error``.

        ``broadcast``: the task's model, when the task comes without it (field 5 unset)
        because a simulation shares one decoded broadcast among the clients of a process
        (:class:`~fedge.client.shared_broadcast.SharedBroadcast`); it is checked against
        this device's model exactly as ``task.model`` would be.
        """
        try:
            if SECAGG_KEY in task.config and task.kind != TRAIN:  # a secure-aggregation stage
                request = _secagg_request(task.config[SECAGG_KEY].bytes_value)
                return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, secagg=self._secagg().answer(request))
            if task.kind == TRAIN:
                return self._train(task, broadcast)
            if task.kind == EVALUATE:
                return self._evaluate(task, broadcast)
            raise ValueError(f"unknown task kind {task.kind!r} (expected 'train' or 'evaluate')")
        except Exception as exc:  # report, never crash the device loop
            log.warning("node %d: task %s failed: %s", self.node_id, task.task_id, exc)
            return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, error=f"{type(exc).__name__}: {exc}")

    def _adopt_architecture(self, task: task_pb2.Task) -> None:
        """Rebuild the model if the task carries another architecture (structured pruning).

        The old model's state does not fit the new shapes: the error-feedback residual and
        codec state are dropped (:meth:`UplinkEncoder.reset`, reason recorded), as are the
        downlink-delta base and QAT steps; the reply of the round says so (``RESET_METRIC``).
        """
        if ARCHITECTURE_KEY not in task.config:
            return
        value = task.config[ARCHITECTURE_KEY]
        if value.WhichOneof("value") != "string_value":
            raise ValueError(f"config {ARCHITECTURE_KEY} must be a string (the model's layer spec as JSON)")
        spec = from_json(value.string_value)
        if spec == self._spec:
            return
        old = digest(self._spec) if self._spec is not None else "the task's own"
        self.trainer = make_trainer(self.runtime, with_architecture(self.task, spec), self.seed)
        self._spec, self._reference = spec, shape_reference(self.trainer.arrays())
        self._held, self.held_round = None, None
        self.uplink.reset(f"round {task.server_round}: model architecture changed ({old} -> {digest(spec)})")
        log.info("node %d: rebuilt the model for architecture %s", self.node_id, digest(spec))

    def _load_global(
        self, task: task_pb2.Task, keep: bool = False, broadcast: SharedBroadcast | None = None
    ) -> dict[str, np.ndarray]:
        """The broadcast's weights (``task.model``, or ``broadcast``'s), loaded into the
        model; ``keep``: hold them as the base of the next downlink delta."""
        self._adopt_architecture(task)
        model = task.model if broadcast is None else broadcast.model

        def decoded(kind: int) -> dict[str, np.ndarray]:
            if broadcast is not None:
                return broadcast.decode(self._reference, kind)
            return decode_update(model, self._reference, expected_kind=kind)

        if model.kind == tensor_pb2.UPDATE_KIND_DELTA:
            if self._held is None or self.held_round != model.base_round:
                kept = "kept no model" if self._held is None else f"holds round {self.held_round}"
                raise ValueError(f"broadcast is a delta from round {model.base_round}, this device {kept}")
            delta = decoded(tensor_pb2.UPDATE_KIND_DELTA)
            weights = {k: self._held[k] + delta[k] for k in self._held}
        else:
            weights = decoded(tensor_pb2.UPDATE_KIND_WEIGHTS)
        self.trainer.load(weights)
        if task.kind == TRAIN:
            self._held, self.held_round = (weights if keep else None), task.server_round
        return weights

    def _train(self, task: task_pb2.Task, broadcast: SharedBroadcast | None = None) -> task_pb2.Update:
        start = time.perf_counter()
        config = config_values.from_wire(task.config)
        settings = round_settings(self.defaults, config)  # parsed once per round for a process's clients
        cfg, plan = self._within_device_memory(settings.train), settings.plan
        keep = config.get(DOWNLINK_DELTA_KEY, False)
        if not isinstance(keep, bool):
            raise ValueError(f"{DOWNLINK_DELTA_KEY} must be a bool, got {keep!r}")
        resets_before = len(self.uplink.resets)
        global_weights = self._load_global(task, keep, broadcast)
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
        reply = task_pb2.Update(task_id=task.task_id, node_id=self.node_id)
        if SECAGG_KEY in config:  # secure aggregation: the update leaves the device masked
            request = _secagg_request(config[SECAGG_KEY])
            reply.secagg.CopyFrom(self._secagg().masked_input(request, delta, stats.num_examples, rng))
        else:  # encoded straight into the reply (not copied into it afterwards)
            self.uplink.encode(delta, plan, base_round=task.server_round - 1, out=reply.update)
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
        if len(self.uplink.resets) > resets_before:
            metrics[RESET_METRIC] = 1.0  # this round's uplink state was dropped (reasons: self.uplink.resets)
        metrics.update(result.metrics)  # QAT: the learned steps, so the server can export an int8 model with them
        if self.tamper is not None:
            metrics = self.tamper.metrics(metrics, task.server_round)
        reply.metrics.update(metrics)
        return reply

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

    def _evaluate(self, task: task_pb2.Task, broadcast: SharedBroadcast | None = None) -> task_pb2.Update:
        self._load_global(task, broadcast=broadcast)
        loss, accuracy = self.trainer.evaluate(self.data)
        metrics = {"num-examples": float(len(self.data)), "loss": loss, "accuracy": accuracy}
        return task_pb2.Update(task_id=task.task_id, node_id=self.node_id, metrics=metrics)


def shape_reference(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays with the names, shapes and dtypes of ``arrays`` and no memory of their own
    (read-only zero-stride views of one element): what checking a broadcast needs."""
    return {k: np.broadcast_to(np.zeros((), dtype=v.dtype), v.shape) for k, v in arrays.items()}


def _secagg_request(payload: object) -> secagg_pb2.SecAggRequest:
    """The serialised SecAggRequest a task's config carries (``ValueError`` if it is not one)."""
    from fedge.protos.v1 import secagg_pb2

    if not isinstance(payload, bytes):
        raise ValueError(f"{SECAGG_KEY} must hold bytes")
    return secagg_pb2.SecAggRequest.FromString(payload)
