"""The device's uplink encoder: error feedback and codec memory kept across rounds.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the part of the delta a
biased codec (top-k, sign, PowerSGD) did not transmit is kept as a residual and added
to the next round's delta, so nothing is lost, only delayed. The residual and the
codecs' per-tensor state (PowerSGD's warm-start factors) live here, one instance per
client, for the whole federation (and across reconnects of a device runtime).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.protos.codecs import encode_update, subtract_decoded
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.v1 import tensor_pb2


class UplinkEncoder:
    """Encodes a client's deltas under an :class:`UplinkPlan`, keeping residuals."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}
        self.codec_state: dict[str, dict] = {}

    def encode(self, delta: Mapping[str, np.ndarray], plan: UplinkPlan, base_round: int) -> tensor_pb2.CompressedUpdate:
        """The encoded update for ``delta`` (``local - global`` by tensor name)."""
        corrected = dict(delta)
        reused: set[str] = set()  # tensors whose residual buffer now holds the corrected delta
        if plan.error_feedback:
            for name, value in delta.items():
                residual = self.residual.get(name)
                if residual is not None and residual.shape == value.shape:
                    if residual.dtype == np.result_type(value, residual):  # same numbers, no new array
                        corrected[name] = np.add(value, residual, out=residual)
                        reused.add(name)
                    else:
                        corrected[name] = value + residual
        update = encode_update(
            corrected,
            plan.codec,
            tensor_pb2.UPDATE_KIND_DELTA,
            base_round,
            state=self.codec_state,
            fallback=plan.fallback,
            dense_below=plan.dense_below,
        )
        if plan.error_feedback:  # residual = corrected - what the server decodes, in place where possible
            remaining = {
                k: v if k in reused else np.array(v, copy=True)
                for k, v in corrected.items()
                if np.issubdtype(v.dtype, np.floating)
            }
            subtract_decoded(update, remaining)
            self.residual = remaining
        else:
            self.residual = {}
        return update

    def residual_norm(self) -> float:
        """L2 norm of the residual carried to the next round."""
        return float(np.sqrt(sum(float((r.astype(np.float64) ** 2).sum()) for r in self.residual.values())))
