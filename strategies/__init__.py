"""fedge.strategies: aggregation. CompressedStrategy wraps any Flower strategy."""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "strategies")

from fedge.strategies.compressed import CompressedStrategy

__all__ = ["CompressedStrategy"]
