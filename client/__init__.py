"""fedge.client: the device. Importable without flwr (numpy, torch, protobuf only)."""

from fedge.client.config import TrainConfig
from fedge.client.edge_client import EdgeClient

__all__ = ["EdgeClient", "TrainConfig"]
