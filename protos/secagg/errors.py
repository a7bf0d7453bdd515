"""The one error type of secure aggregation: bad input or a broken protocol invariant."""

from __future__ import annotations


class SecAggError(ValueError):
    """A secure-aggregation message or secret that cannot be used, and why."""
