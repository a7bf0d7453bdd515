"""Typed decode errors: every way a payload can be refused, each naming the problem.

All derive from :class:`CodecError` (a ``ValueError``), so a caller can catch one type
and still log a precise reason.
"""

from __future__ import annotations


class CodecError(ValueError):
    """A payload or spec that a codec cannot accept."""


class UnknownCodecError(CodecError):
    """The codec id is not registered."""


class MalformedPayloadError(CodecError):
    """Bytes that cannot be parsed: truncated, wrong length, bad parameters."""


class ShapeMismatchError(CodecError):
    """A tensor's shape (or the set of tensor names) differs from the global model."""


class DTypeMismatchError(CodecError):
    """A tensor's element type differs from the global model's."""


class NonFiniteError(CodecError):
    """A decoded tensor holds NaN or Inf."""


class OversizeError(CodecError):
    """A payload larger than the configured limit."""
