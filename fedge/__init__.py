"""fedge: federated learning for edge devices, built on Flower.

Subpackages (each a top-level folder of the repository):
``fedge.protos`` (wire + codecs), ``fedge.client`` (the device), ``fedge.tasks``
(datasets and models), ``fedge.strategies`` (aggregation), ``fedge.server``
(coordinator), ``fedge.simulations`` (one-machine federations, ``fedge-sim``).
"""

__version__ = "0.1.0"
