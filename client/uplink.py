"""The device's uplink encoder: error feedback and codec memory kept across rounds.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the part of the delta a
biased codec (top-k, sign, PowerSGD) did not transmit is kept as a residual and added
to the next round's delta, so nothing is lost, only delayed. The residual and the
codecs' per-tensor state (PowerSGD's warm-start factors) live here, one instance per
client, for the whole federation (and across reconnects of a device runtime).

State that no longer fits the model (structured pruning changed its architecture, or a
residual's shape differs from the delta's) is never applied: it is dropped with a reason
kept in :attr:`UplinkEncoder.resets` and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from fedge.protos.codecs import encode_update, subtract_decoded
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.v1 import tensor_pb2

log = logging.getLogger(__name__)


class UplinkEncoder:
    """Encodes a client's deltas under an :class:`UplinkPlan`, keeping residuals."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}
        self.codec_state: dict[str, dict] = {}
        self.resets: list[str] = []  # why the residual and codec state were dropped, oldest first

    def reset(self, reason: str) -> None:
        """Drop the residual and codec state (they describe another model); keep ``reason``."""
        if self.residual:
            reason += f"; dropped the error-feedback residual of {len(self.residual)} tensors"
        self.residual, self.codec_state = {}, {}
        self.resets.append(reason)
        log.info("uplink state reset: %s", reason)

    def encode(
        self, delta: Mapping[str, np.ndarray], plan: UplinkPlan, base_round: int, out: tensor_pb2.CompressedUpdate | None = None
    ) -> tensor_pb2.CompressedUpdate:
        """The encoded update for ``delta`` (``local - global`` by tensor name), written
        into ``out`` if given (an empty CompressedUpdate: the reply's own field)."""
        stale = sorted(k for k, r in self.residual.items() if k in delta and r.shape != delta[k].shape)
        if stale:
            shapes = ", ".join(f"{k}: {self.residual[k].shape} -> {delta[k].shape}" for k in stale[:3])
            self.reset(f"round {base_round + 1}: error-feedback residual does not fit the update ({shapes})")
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
            out=out,
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
