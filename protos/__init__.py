"""fedge.protos: the wire.

``fedge.protos.v1`` holds the protobuf messages (generated from ``protos/v1/*.proto``,
regenerate with ``make protos``); ``fedge.protos.codecs`` holds the codecs that turn a
numpy tensor into a :class:`~fedge.protos.v1.tensor_pb2.CompressedTensor` and back.
Nothing here imports flwr or torch: a device needs numpy and protobuf only.
"""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "protos")

PROTOCOL_VERSION = 1
