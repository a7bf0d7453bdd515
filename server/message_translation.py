"""Translation between Flower Messages and fedge's wire protos (Task, Update).

Every fedge Grid uses these functions, so the in-process, gRPC and Ray backends
put exactly the same bytes on their (real or simulated) wire.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedge.protos import PROTOCOL_VERSION
from fedge.protos import config_values
from fedge.protos import records
from fedge.protos.codecs import encode_update
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.strategies.record_access import array_records, config_record

#: Config key in which Flower strategies announce the round.
SERVER_ROUND_KEY = "server-round"


def with_message_id(message: Message, message_id: str) -> Message:
    """The instruction ``message`` (same content object) under ``message_id``.

    Flower leaves an instruction's id empty until a Grid assigns one, and its Metadata
    has no public setter; a Message built from a full :class:`Metadata` is Flower's
    public way to give it one.
    """
    m = message.metadata
    metadata = Metadata(
        run_id=m.run_id,
        message_id=message_id,
        src_node_id=m.src_node_id,
        dst_node_id=m.dst_node_id,
        reply_to_message_id=m.reply_to_message_id,
        group_id=m.group_id,
        created_at=m.created_at,
        ttl=m.ttl,
        message_type=m.message_type,
        src_task_id=m.src_task_id,
        dst_task_id=m.dst_task_id,
    )
    # Message.__init__ takes `metadata` (it is how Flower rebuilds messages), its typed
    # overloads do not list it.
    return Message(content=message.content, metadata=metadata)  # type: ignore[call-overload]


def message_to_task(message: Message) -> task_pb2.Task:
    """The Task proto a device receives for an instruction Message.

    The model comes from the ``fedge.model`` record that CompressedStrategy wrote;
    a message from an unwrapped strategy (one ArrayRecord) is sent losslessly.
    """
    task = task_header(message)
    task.model.ParseFromString(model_payload(message))
    return task


def task_header(message: Message) -> task_pb2.Task:
    """The Task of ``message`` without its model (field 5).

    ``task_header(m).SerializeToString()`` followed by the model field (tag, length,
    :func:`model_payload`) is a valid serialised Task that parses to
    ``message_to_task(m)`` and has exactly its size: a simulation can send the model
    once for many tasks and still count each task's real bytes.
    """
    content = message.content
    task = task_pb2.Task(
        task_id=message.metadata.message_id,
        kind=message.metadata.message_type.split(".")[0],
        server_round=_round_of(message),
        node_id=message.metadata.dst_node_id,
        protocol_version=PROTOCOL_VERSION,
    )
    config = config_record(content, records.CONFIG_RECORD)
    if config is not None:
        config_values.to_wire(dict(config), task.config)
    return task


def model_payload(message: Message) -> bytes:
    """The serialised CompressedUpdate ``message`` carries: the ``fedge.model`` record's
    bytes as they are (one object shared by every message of a broadcast), or the one
    ArrayRecord of an unwrapped strategy encoded losslessly (fp32)."""
    content = message.content
    model = config_record(content, records.MODEL_RECORD)
    if model is not None:
        payload = model[records.PAYLOAD]
        if not isinstance(payload, bytes):
            raise ValueError(f"{records.MODEL_RECORD} must hold bytes")
        return payload
    arrays_records = array_records(content)
    if len(arrays_records) == 1:
        arrays = arrays_records[0]
        return encode_update(
            {k: v.numpy() for k, v in arrays.items()}, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS
        ).SerializeToString()
    raise ValueError("message carries no model: expected a fedge.model record or one ArrayRecord")


def update_to_reply(update: task_pb2.Update, instruction: Message) -> Message:
    """The reply Message a strategy receives for a device's Update."""
    if update.error:
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, update.error), reply_to=instruction)
    content = RecordDict({records.METRICS_RECORD: MetricRecord(dict(update.metrics))})
    if update.HasField("update"):
        content[records.UPDATE_RECORD] = ConfigRecord({records.PAYLOAD: update.update.SerializeToString()})
    if update.HasField("secagg"):  # a secure-aggregation stage's answer (fedge.strategies.secagg)
        content[records.SECAGG_RECORD] = ConfigRecord({records.PAYLOAD: update.secagg.SerializeToString()})
    return Message(content, reply_to=instruction)


def failure_reply(instruction: Message, reason: str) -> Message:
    """An error reply for a task that never produced an Update (node lost, timeout)."""
    return Message(Error(ErrorCode.NODE_UNAVAILABLE, reason), reply_to=instruction)


def _round_of(message: Message) -> int:
    """The server round of a message: Flower strategies put it in the config record
    (``server-round``); some set ``group_id`` to it instead."""
    config = config_record(message.content, records.CONFIG_RECORD)
    value = config.get(SERVER_ROUND_KEY) if config is not None else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(message.metadata.group_id)
    except ValueError:
        return 0
