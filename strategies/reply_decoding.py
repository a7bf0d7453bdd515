"""Decoding one training reply against the model its device trained from.

The one place a training reply's bytes become a delta: the ``fedge.update`` record
(parsed by the safe decoder: names, shapes, dtypes, finite values, size), the one
MetricRecord (validated by :class:`~fedge.strategies.reply_validation.ReplyValidator`),
and the base the delta claims. :class:`~fedge.strategies.compressed.CompressedStrategy`
(synchronous rounds: every device trained from the round's broadcast) and
:class:`~fedge.strategies.fedbuff.FedBuffAggregator` (asynchronous: each device from the
model version it was sent) both call it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from flwr.app import Message, RecordDict

from fedge.protos import records
from fedge.protos.codecs import CodecError, decode_update, parse_update
from fedge.protos.v1 import tensor_pb2
from fedge.strategies.record_access import config_record, metric_records
from fedge.strategies.reply_validation import Candidate, ReplyValidator, update_norm


def decode_train_reply(
    reply: Message,
    reference: Mapping[str, np.ndarray],
    expected_base_round: int,
    frozen: Collection[str],
    validator: ReplyValidator,
    max_update_bytes: int,
) -> tuple[Candidate, dict[str, np.ndarray]]:
    """``(candidate, delta)`` of a training reply computed from ``reference``.

    ``delta`` has the names of ``reference`` minus ``frozen`` (a device never sends
    frozen tensors). Raises :class:`~fedge.protos.codecs.CodecError` or
    :class:`~fedge.strategies.reply_validation.ReplyRejected`; the message is the
    reason to record.
    """
    node = reply.metadata.src_node_id
    content = reply.content
    payload = reply_payload(content)
    metrics_records = metric_records(content)
    if len(metrics_records) != 1:
        raise CodecError(f"expected one MetricRecord, got {len(metrics_records)}")
    metrics, notes = validator.check_metrics(metrics_records[0])
    delta = decode_delta(payload, reference, expected_base_round, frozen, max_update_bytes)
    return Candidate(node, metrics, update_norm(delta), notes), delta


def reply_payload(content: RecordDict) -> bytes:
    """The serialised ``Update`` of a training reply's ``fedge.update`` record (``CodecError`` if none)."""
    update = config_record(content, records.UPDATE_RECORD)
    if update is None:
        raise CodecError("reply carries no fedge.update record")
    payload = update.get(records.PAYLOAD)
    if not isinstance(payload, bytes):
        raise CodecError("fedge.update record holds no payload bytes")
    return payload


def decode_delta(
    payload: bytes,
    reference: Mapping[str, np.ndarray],
    expected_base_round: int,
    frozen: Collection[str],
    max_update_bytes: int,
) -> dict[str, np.ndarray]:
    """The delta a serialised ``Update`` carries (names of ``reference`` minus ``frozen``);
    the same every time for the same bytes, so a reply accepted once can be decoded again
    when it is folded into an aggregate (``CodecError`` as :func:`decode_train_reply`)."""
    update = parse_update(payload, max_update_bytes)
    if update.base_round != expected_base_round:
        raise CodecError(f"update is relative to round {update.base_round}, expected {expected_base_round}")
    sent = {k: v for k, v in reference.items() if k not in frozen}
    return decode_update(update, sent, expected_kind=tensor_pb2.UPDATE_KIND_DELTA)
