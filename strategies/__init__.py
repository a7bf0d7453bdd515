"""fedge.strategies: aggregation. CompressedStrategy wraps any Flower strategy."""

from fedge.strategies.compressed import CompressedStrategy

__all__ = ["CompressedStrategy"]
