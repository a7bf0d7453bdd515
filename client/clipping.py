"""Client-side update clipping for Flower's client-side DP wrappers.

``DifferentialPrivacyClientSideFixedClipping`` puts ``clipping_norm`` into the round
config and expects each client to clip its model update to that L2 norm (what Flower's
``fixedclipping_mod`` does for a ClientApp). fedge's client has no Flower mods, so it
clips here, before compressing: clip, then compress.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: Config key of Flower's client-side fixed clipping (flwr.supercore.differential_privacy).
CLIPPING_NORM_KEY = "clipping_norm"


def global_norm(delta: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all float tensors of an update taken together."""
    return float(
        np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in delta.values() if np.issubdtype(v.dtype, np.floating)))
    )


def clip_update(delta: Mapping[str, np.ndarray], clipping_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """``delta`` scaled to L2 norm at most ``clipping_norm``; also returns the norm before."""
    if clipping_norm <= 0:
        raise ValueError(f"{CLIPPING_NORM_KEY} must be > 0, got {clipping_norm}")
    norm = global_norm(delta)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    clipped = {
        k: (v * np.float32(scale)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in delta.items()
    }
    return clipped, norm
