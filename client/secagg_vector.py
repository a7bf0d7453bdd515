"""A device's update as the integer vector secure aggregation masks (flwr-free).

The vector is the model delta's float tensors, flattened in the model's order (the
layout the server announced, checked by digest), restricted to the round's shared
random-k coordinates in the sparse variant, scaled by the device's weight, quantised
(:class:`~fedge.protos.secagg.quantise.Quantiser`), followed by one coordinate holding
the weight itself as an integer in ``[0, levels]``:

    ``[q(w * x_1), ..., q(w * x_m), round(w * levels)]``, ``w = min(1, examples / max_examples)``

so the server's sum gives ``sum(w * x)`` and ``sum(w)``, and their ratio is the
example-weighted mean FedAvg would compute (to the weight's ``value_bits`` resolution),
without any device's example count leaving it in the clear inside the vector.

With error feedback, what was not sent (clipped, rounded, outside the kept
coordinates, or scaled away) is kept per coordinate and added to the next update.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.protos.secagg.coordinates import kept_coordinates
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.params import RoundPlan, float_layout, layout_digest


def weight_level(plan: RoundPlan, num_examples: int) -> int:
    """The device's weight as an integer in ``[0, levels]`` (``levels`` when unweighted)."""
    levels = plan.quantiser.levels
    max_examples = float(plan.setup.max_examples)
    if max_examples <= 0:
        return levels
    return int(min(levels, round(levels * max(num_examples, 0) / max_examples)))


class SecAggEncoder:
    """Turns deltas into integer vectors; keeps the error-feedback residual across rounds."""

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None  # float64, one value per float coordinate
        self._digest: bytes = b""

    def encode(
        self, plan: RoundPlan, delta: Mapping[str, np.ndarray], num_examples: int, rng: np.random.Generator
    ) -> np.ndarray:
        """The vector (uint32, length ``plan.length``) for ``delta`` (``local - global`` by name)."""
        layout = float_layout(delta)
        digest = layout_digest(layout)
        if digest != bytes(plan.setup.layout_digest):
            raise SecAggError("this device's update layout (float tensor names and shapes) differs from the server's")
        flat = np.concatenate([np.asarray(delta[name], dtype=np.float64).ravel() for name, _ in layout])
        if flat.size != plan.setup.vector_length:
            raise SecAggError(f"update has {flat.size} float coordinates, the round expects {plan.setup.vector_length}")
        if plan.setup.error_feedback and self.residual is not None and self._digest == digest:
            flat = flat + self.residual
        positions = (
            kept_coordinates(bytes(plan.setup.coordinate_seed), flat.size, int(plan.setup.kept))
            if plan.setup.kept
            else None
        )
        chosen = flat[positions] if positions is not None else flat
        level = weight_level(plan, num_examples)
        weight = level / plan.quantiser.levels
        q = plan.quantiser.quantise(weight * chosen, rng)
        if plan.setup.error_feedback:
            residual = flat.copy()
            if weight > 0:
                sent = plan.quantiser.dequantise(q) / weight
                if positions is None:
                    residual -= sent
                else:
                    residual[positions] -= sent
            self.residual, self._digest = residual, digest
        else:
            self.residual, self._digest = None, b""
        return np.append(q, np.uint32(level)).astype(np.uint32)
