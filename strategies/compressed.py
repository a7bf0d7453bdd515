"""CompressedStrategy: any Flower Message-API strategy, with compressed traffic.

The wrapper pattern of Flower's DP wrappers (``flwr/serverapp/strategy/dp_*.py``):
it holds the user's strategy and

* ``configure_train``/``configure_evaluate``: injects the uplink plan (codec spec,
  error feedback) into the round's ConfigRecord and replaces each message's ArrayRecord
  by the encoded model (``fedge.model`` record): full weights in the downlink codec, or
  (``downlink_delta=True``) the compressed change from the model each device already
  holds, with server-side error feedback (the next change is taken against what devices
  actually hold, so the broadcast's compression error is carried, not lost). The server
  remembers exactly what devices reconstruct and aggregates relative to that;
* the global model stays the inner strategy's own: the FedOpt family keeps a float64
  model of a float32 network, and Flower's loop hands it back unchanged, as Flower's own
  runtime does. Only what crosses to devices is cast to the model's dtypes (those of
  the first broadcast: what devices build; a resumed run's come with the checkpoint), so replies are decoded against, and deltas
  taken from, exactly the weights devices hold;
* ``aggregate_train``: decodes every reply's ``fedge.update`` against the global model
  it was computed from (safe decoder: names, shapes, dtypes, finite values, size),
  validates every other field the device chose (:mod:`fedge.strategies.reply_validation`:
  metrics, ``num-examples``, the update's norm), drops a bad reply with a recorded reason,
  and hands the inner strategy replies of the form it expects (one ArrayRecord
  ``global + delta``, one MetricRecord); the inner aggregation is guarded
  (:mod:`fedge.strategies.guard`): an exception or a non-finite aggregate abandons the
  round, records why and keeps the model;
* ``aggregate_evaluate``: the same metric validation, guarded likewise;
* everything else delegates, method by method.

So FedAvg, FedProx, FedAdam, Krum, ... aggregate dense arrays unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedge.protos.frozen_tensors import frozen_names
from fedge.protos import records
from fedge.protos.codecs import CodecError, CodecSpec, decode_update, encode_update
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.v1 import tensor_pb2
from fedge.strategies.guard import guarded_aggregate
from fedge.strategies.record_access import array_records, metric_records
from fedge.strategies.reply_decoding import decode_delta, decode_train_reply, reply_payload
from fedge.strategies.reply_validation import Candidate, ReplyPolicy, ReplyRejected, ReplyValidator, update_norm
from fedge.strategies.streamed_mean import reply_weights, streams_weighted_mean, weighted_mean

log = logging.getLogger(__name__)

#: Default largest accepted update, in bytes (a fp32 model of 256M parameters).
DEFAULT_MAX_UPDATE_BYTES = 1 << 30
#: Streamed FedAvg: decoded deltas kept from validation to the fold, at most this many
#: bytes a round (the rest are decoded a second time when folded in). Decoding twice
#: cost ~0.3 ms per reply of a 38k-weight model; 64 MiB keeps ~430 such replies, and
#: bounds the server's memory whatever the number of replies.
KEEP_DECODED_BYTES = 64 << 20


@dataclass
class DroppedReply:
    """A reply the wrapper refused, and why."""

    server_round: int
    node_id: int
    reason: str


@dataclass
class AdjustedReply:
    """A reply kept after an adjustment (``num-examples`` capped, metric keys trimmed)."""

    server_round: int
    node_id: int
    note: str


@dataclass
class AbandonedRound:
    """A round whose aggregate was not applied (the model stayed as it was), and why."""

    server_round: int
    reason: str


@dataclass
class CompressionLog:
    """What the wrapper refused, adjusted and abandoned, round by round."""

    dropped: list[DroppedReply] = field(default_factory=list)
    adjusted: list[AdjustedReply] = field(default_factory=list)
    abandoned: list[AbandonedRound] = field(default_factory=list)

    def dropped_in(self, server_round: int) -> list[DroppedReply]:
        return [d for d in self.dropped if d.server_round == server_round]

    def abandoned_in(self, server_round: int) -> str | None:
        """Why round ``server_round``'s training aggregate was not applied, or None."""
        reasons = [a.reason for a in self.abandoned if a.server_round == server_round]
        return "; ".join(reasons) if reasons else None

    def to_dict(self) -> dict[str, list[dict[str, object]]]:
        return {name: [asdict(entry) for entry in getattr(self, name)] for name in ("dropped", "adjusted", "abandoned")}

    @classmethod
    def from_dict(cls, data: dict[str, list[dict[str, Any]]]) -> CompressionLog:
        return cls(
            dropped=[DroppedReply(**d) for d in data.get("dropped", [])],
            adjusted=[AdjustedReply(**d) for d in data.get("adjusted", [])],
            abandoned=[AbandonedRound(**d) for d in data.get("abandoned", [])],
        )


class CompressedStrategy(Strategy):
    """Wrap ``strategy`` so its traffic is compressed with fedge codecs.

    Parameters
    ----------
    strategy:
        Any Flower Message-API strategy (FedAvg, FedAdam, Krum, a DP wrapper, ...).
    uplink:
        Codec the devices encode their model deltas with.
    downlink:
        Codec the global model is broadcast with (``fp32`` = lossless).
    max_update_bytes:
        Replies larger than this are refused before parsing.
    freeze, trainable:
        Frozen tensors (``fnmatch`` patterns, as ``client.freeze`` / ``client.trainable``):
        replies must not carry them and the global model keeps them bit-identical.
    validation:
        What a reply may claim (``num-examples`` cap, update-norm bounds); the weighting
        key defaults to the inner strategy's ``weighted_by_key``.
    """

    def __init__(
        self,
        strategy: Strategy,
        uplink: UplinkPlan | CodecSpec | str = "fp32",
        downlink: CodecSpec | str = "fp32",
        downlink_delta: bool = False,
        max_update_bytes: int = DEFAULT_MAX_UPDATE_BYTES,
        freeze: Iterable[str] = (),
        trainable: Iterable[str] = (),
        validation: ReplyPolicy | None = None,
    ) -> None:
        self.strategy = strategy
        validation = validation or ReplyPolicy()
        inner_key = getattr(strategy, "weighted_by_key", None)  # Flower's name for the weighting metric
        if not validation.weight_key and isinstance(inner_key, str):
            validation = replace(validation, weight_key=inner_key)
        self.validator = ReplyValidator(validation)
        self.freeze, self.trainable = list(freeze), list(trainable)
        self._frozen: set[str] = set()
        if isinstance(uplink, str):
            uplink = CodecSpec(uplink)
        self.uplink = uplink if isinstance(uplink, UplinkPlan) else UplinkPlan(uplink)
        self.downlink = CodecSpec(downlink) if isinstance(downlink, str) else downlink
        self.downlink_delta = downlink_delta
        self.max_update_bytes = max_update_bytes
        self.log = CompressionLog()
        self._reference: dict[int, dict[str, np.ndarray]] = {}
        self._held: dict[str, np.ndarray] | None = None  # what devices of the last round hold
        self._held_round = 0
        self._holders: set[int] = set()  # nodes that hold it

    # -- configure: encode the broadcast ------------------------------------------
    def add_device_instructions(self, config: ConfigRecord) -> None:
        """What every training instruction tells a device about the wire: the uplink plan,
        and, under downlink deltas, to keep the model it receives (the next delta's base)."""
        config.update(cast(dict[str, Any], self.uplink.to_config()))
        if self.downlink_delta:
            config[records.DOWNLINK_DELTA_KEY] = True

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.add_device_instructions(config)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        weights = self._as_sent(_single_array_record(messages, self.strategy))
        self._frozen = frozen_names(weights, self.freeze, self.trainable)
        full, delta, received = self._broadcast(server_round, weights)
        self._reference = {server_round: received}
        for message in messages:
            holder = message.metadata.dst_node_id in self._holders
            _set_model(message, delta if delta is not None and holder else full)
        self._held, self._held_round = received, server_round
        self._holders = set()
        return messages

    def _as_sent(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """The inner strategy's model as devices get it: in the model's dtypes.

        The first broadcast of a fresh run (the initial model: what devices build) fixes
        them; later ones may be float64 (the FedOpt family computes in float64) and are
        cast here, never in the strategy's own model.
        """
        return _numpy(as_model_dtypes(arrays, self.model_dtypes) if self._held is not None else arrays)

    @property
    def model_dtypes(self) -> dict[str, np.dtype]:
        """The dtypes devices build and decode: those of what they hold (the last
        broadcast; restored with a checkpoint); empty before the first broadcast."""
        return {} if self._held is None else {k: v.dtype for k, v in self._held.items()}

    def _broadcast(
        self, server_round: int, weights: dict[str, np.ndarray]
    ) -> tuple[bytes, bytes | None, dict[str, np.ndarray]]:
        """``(full-weights payload, delta payload or None, weights devices end up with)``."""
        held = self._held
        same_layout = held is not None and held.keys() == weights.keys() and all(held[k].shape == weights[k].shape for k in weights)
        if self.downlink_delta and held is not None and self._holders and same_layout:  # else full weights (e.g. pruned)
            change = {k: weights[k] - held[k] for k in weights}
            encoded = encode_update(change, self.downlink, tensor_pb2.UPDATE_KIND_DELTA, base_round=self._held_round)
            sent = decode_update(encoded)
            received = {k: held[k] + sent[k] for k in held}
            full = encode_update(received, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=server_round - 1)
            return full.SerializeToString(), encoded.SerializeToString(), received
        codec = "fp32" if self.downlink_delta else self.downlink
        full = encode_update(weights, codec, tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=server_round - 1)
        return full.SerializeToString(), None, decode_update(full)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        if messages:
            weights = self._as_sent(_single_array_record(messages, self.strategy))
            codec = "fp32" if self.downlink_delta else self.downlink
            payload = encode_update(weights, codec, tensor_pb2.UPDATE_KIND_WEIGHTS, server_round).SerializeToString()
            for message in messages:
                _set_model(message, payload)
        return messages

    # -- aggregate: decode and validate replies -------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reference = self._reference.get(server_round)
        if reference is None:
            raise RuntimeError(f"aggregate_train for round {server_round} before configure_train")
        replies = list(replies)
        # A device that answered without error decoded this round's broadcast: it holds it.
        self._holders = {r.metadata.src_node_id for r in replies if not r.has_error()}
        failed = [r for r in replies if r.has_error()]
        # FedAvg's mean is folded in reply by reply (fedge.strategies.streamed_mean): the
        # delta decoded here for validation is kept for the fold while the kept deltas
        # stay within KEEP_DECODED_BYTES; past that it is dropped and decoded again when
        # folded in (the same numbers: decoding is deterministic).
        stream = streams_weighted_mean(self.strategy)
        decoded: list[tuple[Message, Candidate, dict[str, np.ndarray] | None]] = []
        kept_bytes = 0
        for reply in replies:
            if not reply.has_error():
                entry = self._decode_reply(server_round, reply, reference)
                if entry is not None:
                    delta: dict[str, np.ndarray] | None = entry[1]
                    if stream:
                        size = sum(v.nbytes for v in entry[1].values())
                        delta, kept_bytes = (entry[1], kept_bytes + size) if kept_bytes + size <= KEEP_DECODED_BYTES else (None, kept_bytes)
                    decoded.append((reply, entry[0], delta))
        screened = self.validator.screen([c for _, c, _ in decoded], model_norm=update_norm(reference))
        self._record(server_round, screened.dropped, screened.kept)
        kept_ids = {id(c) for c in screened.kept}
        kept = list(failed)
        # streamed: each kept reply's decoded delta, or its compressed update to decode again, in reply order
        folded: list[dict[str, np.ndarray] | bytes] = []
        for reply, candidate, delta in decoded:
            if id(candidate) in kept_ids:
                if stream:
                    folded.append(delta if delta is not None else reply_payload(reply.content))
                    dense = ArrayRecord()  # FedAvg checks and weighs the replies; the arrays come from weighted_mean
                else:
                    assert delta is not None  # the dense path keeps every delta
                    dense = ArrayRecord({name: Array(self._dense(reference, delta, name)) for name in reference})
                reply.content = RecordDict({"arrays": dense, records.METRICS_RECORD: _metric_record(reply, candidate)})
                kept.append(reply)
        del decoded

        def aggregate() -> tuple[ArrayRecord | None, MetricRecord | None]:
            arrays, metrics = self.strategy.aggregate_train(server_round, kept)
            if stream and arrays is not None:
                deltas = (
                    decode_delta(entry, reference, server_round - 1, self._frozen, self.max_update_bytes)
                    if isinstance(entry, bytes) else entry
                    for entry in folded
                )
                dense = ({name: self._dense(reference, delta, name, in_place=True) for name in reference} for delta in deltas)
                arrays = weighted_mean(dense, reply_weights(kept, cast(FedAvg, self.strategy).weighted_by_key))
            return arrays, metrics

        arrays, metrics, abandoned = guarded_aggregate(self.strategy, aggregate)
        if abandoned is not None:
            log.warning("round %d abandoned, the global model is kept: %s", server_round, abandoned)
            self.log.abandoned.append(AbandonedRound(server_round, abandoned))
            return None, None
        if arrays is not None:  # kept in the inner strategy's dtypes: cast only when sent (_as_sent)
            for name in self._frozen:  # bit-identical, whatever the inner strategy's arithmetic
                arrays[name] = Array(reference[name])
        return arrays, metrics

    @staticmethod
    def _dense(
        reference: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], name: str, in_place: bool = False
    ) -> np.ndarray:
        """Tensor ``name`` of the model a reply describes: reference + delta (frozen tensors: the reference).

        ``in_place``: the sum may be written into the delta's own array (the caller is done
        with the delta: the streamed fold), which saves a new array per tensor and reply."""
        if name not in delta:
            return reference[name]
        base, change = reference[name], delta[name]
        if in_place and change.dtype == base.dtype and change.shape == base.shape and change.flags.writeable:
            return np.add(base, change, out=change)  # base + change, the same numbers
        return _apply_delta(base, change)

    def _decode_reply(
        self, server_round: int, reply: Message, reference: dict[str, np.ndarray]
    ) -> tuple[Candidate, dict[str, np.ndarray]] | None:
        """The reply's validated metrics and decoded delta; None (and recorded) if refused."""
        try:
            return decode_train_reply(
                reply, reference, server_round - 1, self._frozen, self.validator, self.max_update_bytes
            )
        except (CodecError, ReplyRejected) as exc:
            self._record(server_round, [(reply.metadata.src_node_id, f"{type(exc).__name__}: {exc}")], [])
            return None

    def _record(self, server_round: int, dropped: list[tuple[int, str]], kept: list[Candidate]) -> None:
        """Log and keep the round's refusals and adjustments (results.json reads them)."""
        for node, reason in dropped:
            log.warning("round %d: dropped reply from node %d: %s", server_round, node, reason)
            self.log.dropped.append(DroppedReply(server_round, node, reason))
        for candidate in kept:
            for note in candidate.notes:
                log.info("round %d: reply from node %d adjusted: %s", server_round, candidate.node_id, note)
                self.log.adjusted.append(AdjustedReply(server_round, candidate.node_id, note))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate each evaluation reply's metrics (as training replies'), then aggregate, guarded."""
        kept: list[Message] = []
        candidates: list[tuple[Message, Candidate]] = []
        for reply in replies:
            if reply.has_error():
                kept.append(reply)
                continue
            node = reply.metadata.src_node_id
            try:
                metrics_records = metric_records(reply.content)
                if len(metrics_records) != 1:
                    raise ReplyRejected(f"expected one MetricRecord, got {len(metrics_records)}")
                metrics, notes = self.validator.check_metrics(metrics_records[0])
            except ReplyRejected as exc:
                self._record(server_round, [(node, f"evaluation: {type(exc).__name__}: {exc}")], [])
                continue
            candidates.append((reply, Candidate(node, metrics, notes=notes)))
        screened = self.validator.screen([c for _, c in candidates])
        self._record(server_round, screened.dropped, screened.kept)
        for reply, candidate in candidates:
            reply.content = RecordDict({records.METRICS_RECORD: _metric_record(reply, candidate)})
            kept.append(reply)
        _, aggregated, failed = guarded_aggregate(self.strategy, lambda: (None, self.strategy.aggregate_evaluate(server_round, kept)))
        if failed is not None:
            log.warning("round %d: federated evaluation not aggregated: %s", server_round, failed)
        return aggregated

    # -- delegation, method by method ----------------------------------------------
    def summary(self) -> None:
        log.debug("CompressedStrategy: uplink %s, downlink %s, wrapping:", self.uplink, self.downlink)
        self.strategy.summary()


def _metric_record(reply: Message, candidate: Candidate) -> MetricRecord:
    """The kept reply's MetricRecord holding ``candidate.metrics``: the reply's own record
    when validation changed nothing in it (same keys, values and value types; building a
    MetricRecord type-checks every entry again, ~40 us for a device's ten metrics), else a
    new one."""
    received = metric_records(reply.content)
    if len(received) == 1 and not candidate.notes:
        record, metrics = received[0], candidate.metrics
        if len(record) == len(metrics) and all(
            key in metrics and type(metrics[key]) is type(value) and metrics[key] == value for key, value in record.items()
        ):
            return record
    return MetricRecord(candidate.metrics)


def _single_array_record(messages: list[Message], strategy: Strategy) -> ArrayRecord:
    """The one ArrayRecord the inner strategy put into its messages."""
    arrays = array_records(messages[0].content)
    if len(arrays) != 1:
        raise ValueError(
            f"{type(strategy).__name__} sent a message with {len(arrays)} "
            "ArrayRecords; CompressedStrategy needs exactly one"
        )
    return arrays[0]


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


def _set_model(message: Message, payload: bytes) -> None:
    """Replace the message's ArrayRecord by the encoded model (a ``fedge.model`` record)."""
    content = message.content
    new = RecordDict({k: v for k, v in content.items() if not isinstance(v, ArrayRecord)})
    new[records.MODEL_RECORD] = ConfigRecord({records.PAYLOAD: payload})
    message.content = new


def as_model_dtypes(arrays: ArrayRecord, dtypes: Mapping[str, np.dtype]) -> ArrayRecord:
    """``arrays`` with each tensor named in ``dtypes`` cast to that dtype (others as they are).

    The FedOpt strategies keep float64 models of float32 networks; what devices receive
    and what a run's ``final_model.npz`` holds is in the network's own dtypes.
    """
    if all(np.dtype(arrays[k].dtype) == dtypes[k] for k in arrays.keys() if k in dtypes):
        return arrays
    return ArrayRecord(
        {k: Array(v.numpy().astype(dtypes[k], copy=False)) if k in dtypes else v for k, v in arrays.items()}
    )


def _apply_delta(base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``base + delta`` in the base's dtype (an array even for 0-d tensors)."""
    return np.asarray(base + delta, dtype=base.dtype)
