"""fedge.strategies: aggregation. CompressedStrategy wraps any Flower strategy.

``CompressedStrategy`` is imported on first use (PEP 562 module ``__getattr__``), so
that a light submodule (``fedge.strategies.reply_validation``, read by the Hydra schema
behind ``fedge-sim --help``) does not import Flower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "strategies")

if TYPE_CHECKING:
    from fedge.strategies.compressed import CompressedStrategy

__all__ = ["CompressedStrategy"]


def __getattr__(name: str) -> object:
    """``CompressedStrategy`` on first access (it imports Flower); nothing else is lazy."""
    if name == "CompressedStrategy":
        from fedge.strategies.compressed import CompressedStrategy

        return CompressedStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
