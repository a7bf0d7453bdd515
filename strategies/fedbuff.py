"""FedBuff: buffered asynchronous aggregation around an unchanged linear Flower strategy.

Devices train whenever they are free, each on the newest model it was sent; every
``buffer_size`` (K) arriving updates the server applies one aggregation step (Nguyen et
al., "Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022,
Algorithm 1). :class:`FedBuffAggregator` is that server's bookkeeping, free of any
transport or clock (the loop that keeps ``concurrency`` devices busy is
:func:`fedge.server.async_driver.run_async_federation`):

* :meth:`FedBuffAggregator.instruction` builds the ``train`` Message for one device on
  the newest model: full weights in the downlink codec, or with ``downlink_delta`` the
  compressed change from the model *that device* holds (server-side error feedback per
  device: the server remembers exactly what each device reconstructed). Each such
  dispatch gets an id that travels as the Task's ``server_round``, so the device
  (unchanged) answers with a delta whose ``base_round`` is ``id - 1``;
* :meth:`FedBuffAggregator.receive` decodes a reply with the safe decoder against what
  that device decoded (:func:`~fedge.strategies.reply_decoding.decode_train_reply`),
  validates its metrics, computes its staleness (model versions applied since its
  base) and drops it, with the reason recorded, past ``max_staleness``;
* :meth:`FedBuffAggregator.aggregate` checks the buffer's update norms against the
  validator's bound, its median taken over the fleet (each device's latest applied
  norm) rather than over a buffer that fast devices dominate, then hands the K buffered updates to the inner Flower
  strategy as one round's replies, each ArrayRecord being ``x_t + w(s_i) * delta_i``
  (``w``: :class:`~fedge.strategies.staleness.StalenessRule`; frozen tensors stay
  ``x_t``). FedAvg then applies ``x_t + sum_i n_i w_i delta_i / sum_i n_i`` (FedBuff's
  step with server learning rate 1, weighted by examples); FedAvgM, FedAdam, FedYogi and
  FedAdagrad take that same average change as their pseudo-gradient. The inner
  strategy's ``configure_train`` runs once per model version (its messages unused: the
  async loop chooses devices), so FedOpt's ``current_arrays`` and FedProx's
  ``proximal-mu`` are what they would be in a synchronous round.

Written here because Flower has no asynchronous mode; only the buffering, staleness
and per-device bookkeeping are new, decoding, validation and aggregation are reused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy
from flwr.supercore.run import Run

from fedge.protos import records
from fedge.protos.codecs import CodecError, decode_update, encode_update
from fedge.protos.frozen_tensors import frozen_names
from fedge.protos.v1 import tensor_pb2
from fedge.strategies.async_state import AsyncState, BufferedUpdate, Dispatch
from fedge.strategies.compressed import AdjustedReply, CompressedStrategy, DroppedReply
from fedge.strategies.guard import guarded_aggregate
from fedge.strategies.reply_decoding import decode_train_reply
from fedge.strategies.reply_validation import Candidate, ReplyRejected, update_norm
from fedge.strategies.fedbuff_config import FedBuffConfig, linear_refusal

log = logging.getLogger(__name__)

#: Config key in which Flower announces the round; an async dispatch puts its id there.
ROUND_KEY = "server-round"

#: Strategies whose aggregate is a weighted sum of the replies (exact classes).
LINEAR_STRATEGIES: tuple[type[Strategy], ...] = (FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad)

def check_linear(strategy: Strategy) -> None:
    """Raise ``ValueError`` saying why ``strategy`` cannot be FedBuff's aggregator."""
    if type(strategy) not in LINEAR_STRATEGIES:
        raise ValueError(linear_refusal(type(strategy).__name__))


@dataclass
class Arrival:
    """What became of one completed dispatch."""

    node_id: int
    dispatch: int
    base_version: int
    staleness: int
    weight: float
    kept: bool
    reason: str = ""  # why it was not kept ("" when kept)
    time_s: float = 0.0  # the fleet's clock at arrival


@dataclass
class AggregationStep:
    """One applied (or abandoned) aggregation step."""

    step: int  # the inner strategy's server_round (= model version it produces)
    version: int  # model version after the step
    nodes: list[int]
    dispatches: list[int]
    staleness: list[int]  # per applied update
    weights: list[float]  # per applied update
    abandoned: str | None = None  # why the model was kept, if it was
    metrics: dict[str, Any] = field(default_factory=dict)  # the inner strategy's aggregated train metrics
    refused: int = 0  # buffered updates the step's checks dropped (norm bound), recorded in the CompressionLog


@dataclass
class AsyncLog:
    """Every arrival and step, in order (results.json reads it)."""

    arrivals: list[Arrival] = field(default_factory=list)
    steps: list[AggregationStep] = field(default_factory=list)

    @property
    def discarded_stale(self) -> int:
        """Finished updates dropped for being past ``max_staleness``."""
        return sum(1 for a in self.arrivals if not a.kept and a.reason.startswith("stale"))

    def to_dict(self) -> dict[str, Any]:
        return {"arrivals": [asdict(a) for a in self.arrivals], "steps": [asdict(s) for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsyncLog:
        return cls([Arrival(**a) for a in data.get("arrivals", [])], [AggregationStep(**s) for s in data.get("steps", [])])


class _NodeList(Grid):
    """The Grid the inner strategy's ``configure_train`` samples from: node ids only.

    Its messages are not sent (the async loop picks devices); pushing raises.
    """

    def __init__(self, node_ids: Sequence[int]) -> None:
        self._nodes = list(node_ids)
        self._run = Run.create_empty(0)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        raise RuntimeError("FedBuff configures the inner strategy only; its messages are not sent")

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        raise RuntimeError("FedBuff configures the inner strategy only; its messages are not sent")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        raise RuntimeError("FedBuff configures the inner strategy only; its messages are not sent")


class FedBuffAggregator:
    """The server side of FedBuff around ``compressed`` (its codecs, validator, frozen
    tensors, log and inner Flower strategy; see the module docstring).

    Parameters
    ----------
    compressed:
        The run's CompressedStrategy; its inner strategy must be linear (:func:`check_linear`).
    config:
        K, concurrency, staleness rule, ``max_staleness``.
    initial:
        The model at version 0 (ignored when ``state`` is given).
    train_config:
        The ConfigRecord every training instruction carries (training defaults).
    node_ids:
        The fleet (the inner strategy's ``configure_train`` samples from it).
    state:
        A restored :class:`AsyncState` (resume); ``None`` starts at version 0.

    Building Messages needs Flower's task identity, which creating any FedgeGrid sets.
    """

    def __init__(
        self,
        compressed: CompressedStrategy,
        config: FedBuffConfig,
        initial: ArrayRecord,
        train_config: ConfigRecord,
        node_ids: Sequence[int],
        state: AsyncState | None = None,
        log_: AsyncLog | None = None,
    ) -> None:
        check_linear(compressed.strategy)
        config.check()
        self.compressed = compressed
        self.strategy = compressed.strategy
        self.config = config
        self.rule = config.rule()
        self.train_config = train_config
        self.node_ids = sorted(int(n) for n in node_ids)
        needed = int(getattr(self.strategy, "min_available_nodes", 0))
        if needed > len(self.node_ids):
            raise ValueError(f"strategy.min_available_nodes={needed} exceeds the fleet of {len(self.node_ids)}")
        self.state = state or AsyncState(0, {k: v.numpy() for k, v in initial.items()})
        self.log = log_ or AsyncLog()
        self.frozen = frozen_names(self.state.model, compressed.freeze, compressed.trainable)
        self._broadcast: tuple[int, bytes] | None = None  # (version, full-weights payload), cached
        self._round_config = self._configure()

    # -- the model ---------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.state.version

    @property
    def model(self) -> ArrayRecord:
        return ArrayRecord({k: Array(v) for k, v in self.state.model.items()})

    def _configure(self) -> ConfigRecord:
        """Run the inner strategy's ``configure_train`` for the next step (it records the
        current model, FedProx adds its mu); the config training instructions carry."""
        config = ConfigRecord(dict(self.train_config))
        self.compressed.add_device_instructions(config)
        step = self.state.version + 1
        messages = list(self.strategy.configure_train(step, self.model, config, _NodeList(self.node_ids)))
        if not messages:
            raise ValueError(f"{type(self.strategy).__name__}.configure_train sampled no node (fraction_train = 0?)")
        configs = messages[0].content.config_records
        chosen = configs.get(records.CONFIG_RECORD) or next(iter(configs.values()), ConfigRecord())
        return ConfigRecord(dict(chosen))

    # -- dispatch ----------------------------------------------------------------
    def instruction(self, node_id: int, now_s: float = 0.0) -> Message:
        """The training Message for ``node_id`` on the newest model (registers the dispatch)."""
        state = self.state
        if any(d.node_id == node_id for d in state.inflight.values()):
            raise ValueError(f"node {node_id} already has a task in flight")
        dispatch = state.next_dispatch
        state.next_dispatch += 1
        payload, reference = self._model_for(node_id, dispatch)
        config = ConfigRecord(dict(self._round_config))
        config[ROUND_KEY] = dispatch
        content = RecordDict({records.CONFIG_RECORD: config, records.MODEL_RECORD: ConfigRecord({records.PAYLOAD: payload})})
        state.inflight[dispatch] = Dispatch(node_id, state.version, reference, now_s)
        return Message(content, node_id, MessageType.TRAIN, group_id=str(dispatch))

    def _model_for(self, node_id: int, dispatch: int) -> tuple[bytes, str]:
        """``(model payload, reference key)`` for a dispatch to ``node_id``."""
        state, compressed = self.state, self.compressed
        if not compressed.downlink_delta:
            key = f"v{state.version}"
            if self._broadcast is None or self._broadcast[0] != state.version or key not in state.references:
                full = encode_update(state.model, compressed.downlink, tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=state.version)
                state.references[key] = decode_update(full)
                self._broadcast = (state.version, full.SerializeToString())
            return self._broadcast[1], key
        key = f"d{dispatch}"
        held_dispatch = state.held.get(node_id)
        held = state.references.get(f"d{held_dispatch}") if held_dispatch is not None else None
        if held is not None and held_dispatch is not None:
            change = {k: state.model[k] - held[k] for k in state.model}
            encoded = encode_update(change, compressed.downlink, tensor_pb2.UPDATE_KIND_DELTA, base_round=held_dispatch)
            sent = decode_update(encoded)
            state.references[key] = {k: np.asarray(held[k] + sent[k], dtype=held[k].dtype) for k in held}
        else:
            encoded = encode_update(state.model, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=state.version)
            state.references[key] = decode_update(encoded)
        state.held[node_id] = dispatch
        return encoded.SerializeToString(), key

    @staticmethod
    def dispatch_of(message: Message) -> int:
        """The dispatch id of an instruction (its ``group_id``); replies keep it."""
        return int(message.metadata.group_id)

    # -- arrivals ----------------------------------------------------------------
    def receive(self, dispatch: int, reply: Message | None, reason: str = "", now_s: float = 0.0) -> Arrival:
        """Take the answer to ``dispatch`` (``None``: lost, with ``reason``) into the buffer."""
        state = self.state
        sent = state.inflight.pop(dispatch, None)
        if sent is None:
            arrival = Arrival(-1, dispatch, -1, -1, 0.0, False, f"unknown dispatch {dispatch} (not in flight)", now_s)
            self.log.arrivals.append(arrival)
            return arrival
        node = sent.node_id
        staleness = state.version - sent.base_version
        arrival = Arrival(node, dispatch, sent.base_version, staleness, self.rule.weight(staleness), False, "", now_s)
        try:
            arrival.reason = self._take(dispatch, sent, reply, reason, arrival)
        finally:
            state.prune_references()
        arrival.kept = not arrival.reason
        self.log.arrivals.append(arrival)
        if arrival.reason and not arrival.reason.startswith("lost"):
            log.info("dispatch %d from node %d not used: %s", dispatch, node, arrival.reason)
        return arrival

    def _take(self, dispatch: int, sent: Dispatch, reply: Message | None, reason: str, arrival: Arrival) -> str:
        """Buffer the reply; ``""`` if kept, else why not (also recorded as a dropped reply)."""
        state, node = self.state, sent.node_id
        if reply is None or reply.has_error():
            if state.held.get(node) == dispatch:  # it may not hold what it was sent
                del state.held[node]
            return f"lost: {reason or (reply.error.reason if reply is not None else 'no answer')}"
        if reply.metadata.src_node_id != node:
            return self._drop(node, f"reply from node {reply.metadata.src_node_id} to a task sent to node {node}")
        try:
            candidate, delta = decode_train_reply(
                reply, state.references[sent.reference], dispatch - 1, self.frozen,
                self.compressed.validator, self.compressed.max_update_bytes,
            )
        except (CodecError, ReplyRejected) as exc:
            return self._drop(node, f"{type(exc).__name__}: {exc}")
        if arrival.staleness > self.config.max_staleness:
            return f"stale: {arrival.staleness} versions > mode.max_staleness {self.config.max_staleness}"
        state.buffer.append(
            BufferedUpdate(node, dispatch, sent.base_version, arrival.staleness, arrival.weight, delta,
                           dict(candidate.metrics), candidate.norm, list(candidate.notes), arrival.time_s)
        )
        return ""

    def _drop(self, node: int, reason: str) -> str:
        self.compressed.log.dropped.append(DroppedReply(self.state.version + 1, node, reason))
        log.warning("async step %d: dropped reply from node %d: %s", self.state.version + 1, node, reason)
        return f"refused: {reason}"

    def ready(self) -> bool:
        """Does the buffer hold K updates?"""
        return len(self.state.buffer) >= self.config.buffer_size

    # -- aggregation -------------------------------------------------------------
    def aggregate(self) -> AggregationStep:
        """Apply the buffer as one round of the inner strategy (see the module docstring)."""
        state = self.state
        step = state.version + 1
        buffer, state.buffer = state.buffer, []
        candidates = [Candidate(b.node_id, b.metrics, b.norm, list(b.notes)) for b in buffer]
        # The norm bound's median is taken over the fleet (each device's latest accepted
        # norm, the buffer's own included), not over the buffer: fast devices fill the
        # buffer, and their small late-training updates would make a slow device's honest
        # update look like an outlier.
        fleet = {**state.latest_norms, **{b.node_id: b.norm for b in buffer}}
        bound = self.compressed.validator.norm_bound(list(fleet.values()), update_norm(state.model))
        within = []
        for candidate in candidates:
            if candidate.norm <= bound:
                within.append(candidate)
            else:
                self._drop(candidate.node_id, f"update norm {candidate.norm:.4g} exceeds the step's bound {bound:.4g}")
        screened = self.compressed.validator.screen(within)  # one metric key set for the step
        kept_ids = {id(c) for c in screened.kept}
        kept = [(b, c) for b, c in zip(buffer, candidates) if id(c) in kept_ids]
        state.latest_norms.update({b.node_id: b.norm for b, _ in kept})
        for b, c in kept:
            for note in c.notes:
                self.compressed.log.adjusted.append(AdjustedReply(step, b.node_id, note))
        record = AggregationStep(step, state.version, [b.node_id for b, _ in kept], [b.dispatch for b, _ in kept],
                                 [b.staleness for b, _ in kept], [b.weight for b, _ in kept],
                                 refused=len(buffer) - len(kept))
        if not kept:
            record.abandoned = "no update in the buffer passed the step's checks"
        else:
            replies = [self._as_reply(step, b, c) for b, c in kept]
            arrays, metrics, abandoned = guarded_aggregate(self.strategy, lambda: self.strategy.aggregate_train(step, replies))
            if abandoned is not None or arrays is None:
                record.abandoned = abandoned or f"{type(self.strategy).__name__} returned no arrays"
            else:
                model = state.model
                state.model = {
                    k: model[k] if k in self.frozen else np.asarray(arrays[k].numpy(), dtype=model[k].dtype)
                    for k in model
                }
                state.version = record.version = step
                record.metrics = dict(metrics or {})
                self._round_config = self._configure()
        if record.abandoned:
            log.warning("async step %d abandoned, the model is kept: %s", step, record.abandoned)
        self.log.steps.append(record)
        state.prune_references()
        return record

    def _as_reply(self, step: int, update: BufferedUpdate, candidate: Candidate) -> Message:
        """The buffered update as the reply the inner strategy expects: ``x_t + w * delta``."""
        model = self.state.model
        arrays = ArrayRecord(
            {
                name: Array(np.asarray(model[name] + update.weight * update.delta[name], dtype=model[name].dtype))
                if name in update.delta else Array(model[name])
                for name in model
            }
        )
        instruction = Message(RecordDict(), update.node_id, MessageType.TRAIN, group_id=str(step))
        content = RecordDict({"arrays": arrays, records.METRICS_RECORD: MetricRecord(candidate.metrics)})
        return Message(content, reply_to=instruction)

    # -- checkpoint ---------------------------------------------------------------
    def checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(description, arrays)`` of the state and log (the inner strategy's state apart)."""
        description, arrays = self.state.to_checkpoint()
        return {"state": description, "log": self.log.to_dict()}, arrays

    @classmethod
    def restore(
        cls,
        compressed: CompressedStrategy,
        config: FedBuffConfig,
        train_config: ConfigRecord,
        node_ids: Sequence[int],
        description: dict[str, Any],
        arrays: dict[str, np.ndarray],
    ) -> FedBuffAggregator:
        """The aggregator :meth:`checkpoint` described; restore the inner strategy's own
        state (:func:`fedge.server.strategy_state.restore`) before calling this."""
        state = AsyncState.from_checkpoint(description["state"], arrays)
        return cls(compressed, config, ArrayRecord(), train_config, node_ids, state=state,
                   log_=AsyncLog.from_dict(description["log"]))
