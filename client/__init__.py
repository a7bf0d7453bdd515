"""fedge.client: the device. Importable without flwr, and without torch (numpy, protobuf, grpcio); torch only for the torch runtime."""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "client")

from fedge.client.train_config import TrainConfig
from fedge.client.edge_client import EdgeClient

__all__ = ["EdgeClient", "TrainConfig"]
