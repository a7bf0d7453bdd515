from fedge.protos.v1 import secagg_pb2 as _secagg_pb2
from fedge.protos.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigValue(_message.Message):
    __slots__ = ("int_value", "float_value", "bool_value", "string_value", "bytes_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BYTES_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    float_value: float
    bool_value: bool
    string_value: str
    bytes_value: bytes
    def __init__(self, int_value: _Optional[int] = ..., float_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ..., bytes_value: _Optional[bytes] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "server_round", "node_id", "model", "config", "protocol_version")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ConfigValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ConfigValue, _Mapping]] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SERVER_ROUND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    server_round: int
    node_id: int
    model: _tensor_pb2.CompressedUpdate
    config: _containers.MessageMap[str, ConfigValue]
    protocol_version: int
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., server_round: _Optional[int] = ..., node_id: _Optional[int] = ..., model: _Optional[_Union[_tensor_pb2.CompressedUpdate, _Mapping]] = ..., config: _Optional[_Mapping[str, ConfigValue]] = ..., protocol_version: _Optional[int] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("task_id", "node_id", "error", "update", "metrics", "secagg")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    node_id: int
    error: str
    update: _tensor_pb2.CompressedUpdate
    metrics: _containers.ScalarMap[str, float]
    secagg: _secagg_pb2.SecAggReply
    def __init__(self, task_id: _Optional[str] = ..., node_id: _Optional[int] = ..., error: _Optional[str] = ..., update: _Optional[_Union[_tensor_pb2.CompressedUpdate, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., secagg: _Optional[_Union[_secagg_pb2.SecAggReply, _Mapping]] = ...) -> None: ...
