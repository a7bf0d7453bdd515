"""fedge.client: the device. Importable without flwr, and without torch (numpy, protobuf, grpcio); torch only for the torch runtime.

``EdgeClient`` is imported on first use (PEP 562 module ``__getattr__``), so that
importing a light submodule (``fedge.client.train_config``, read by the Hydra schema
behind ``fedge-sim --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "client")

from fedge.client.train_config import TrainConfig

if TYPE_CHECKING:
    from fedge.client.edge_client import EdgeClient

__all__ = ["EdgeClient", "TrainConfig"]


def __getattr__(name: str) -> object:
    """``EdgeClient`` on first access (it imports torch); nothing else is lazy."""
    if name == "EdgeClient":
        from fedge.client.edge_client import EdgeClient

        return EdgeClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
