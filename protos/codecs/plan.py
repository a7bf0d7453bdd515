"""The uplink compression plan a server announces in each round's config.

Besides the codec spec (``fedge.codec``, ``fedge.codec.<param>``) it says whether clients
run error feedback, below which size tensors go with the fallback codec, and which
codec that is. Devices read it with :meth:`UplinkPlan.from_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedge.protos.codecs.base import CodecSpec

ERROR_FEEDBACK_KEY = "fedge.error_feedback"
DENSE_BELOW_KEY = "fedge.dense_below"
FALLBACK_KEY = "fedge.fallback"


@dataclass(frozen=True)
class UplinkPlan:
    """How devices encode their deltas."""

    codec: CodecSpec = field(default_factory=CodecSpec)
    error_feedback: bool = False  # keep the compression error and add it to the next delta
    dense_below: int = 0  # float tensors with fewer elements go with `fallback`
    fallback: str = "fp32"

    def to_config(self) -> dict[str, object]:
        return {
            **self.codec.to_config(),
            ERROR_FEEDBACK_KEY: self.error_feedback,
            DENSE_BELOW_KEY: self.dense_below,
            FALLBACK_KEY: self.fallback,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> UplinkPlan:
        error_feedback = config.get(ERROR_FEEDBACK_KEY, False)
        dense_below = config.get(DENSE_BELOW_KEY, 0)
        fallback = config.get(FALLBACK_KEY, "fp32")
        if not isinstance(error_feedback, bool):
            raise ValueError(f"{ERROR_FEEDBACK_KEY} must be a bool, got {error_feedback!r}")
        if isinstance(dense_below, bool) or not isinstance(dense_below, int) or dense_below < 0:
            raise ValueError(f"{DENSE_BELOW_KEY} must be an int >= 0, got {dense_below!r}")
        if not isinstance(fallback, str):
            raise ValueError(f"{FALLBACK_KEY} must be a codec name, got {fallback!r}")
        return cls(CodecSpec.from_config(config), error_feedback, dense_below, fallback)
