"""The state of an asynchronous (FedBuff) federation, as plain data that survives a restart.

:class:`AsyncState` is everything :class:`~fedge.strategies.fedbuff.FedBuffAggregator`
needs to go on after a restart: the model version and weights, the buffer of decoded,
staleness-weighted updates not yet applied, the dispatches in flight (which device was
sent which version, and what it decoded), and with downlink deltas what each device
holds. :meth:`AsyncState.to_checkpoint` splits it into a JSON-able description and named
numpy arrays (no pickle), the form :mod:`fedge.server.checkpoint` writes.
The inner Flower strategy's own state (FedAdam's moments, FedAvgM's momentum) is not
here: :mod:`fedge.server.strategy_state` captures it, as for synchronous runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedge.strategies.reply_validation import MetricValue



@dataclass
class Dispatch:
    """A training task in flight: who got it and which model version it carried."""

    node_id: int
    base_version: int  # model version the device trains from
    reference: str  # key into AsyncState.references: what the device decoded
    sent_s: float = 0.0  # the fleet's clock when it was sent (simulated or wall seconds)


@dataclass
class BufferedUpdate:
    """A decoded, accepted update waiting in the buffer for the next aggregation step."""

    node_id: int
    dispatch: int
    base_version: int
    staleness: int  # model versions between its base and the version it is applied to
    weight: float  # the staleness rule's factor, in (0, 1]
    delta: dict[str, np.ndarray]  # decoded change, frozen tensors left out
    metrics: dict[str, MetricValue]
    norm: float  # L2 norm of delta (before weighting)
    notes: list[str] = field(default_factory=list)
    arrived_s: float = 0.0


@dataclass
class AsyncState:
    """Model version, model, buffer, in-flight dispatches and device holdings."""

    version: int
    model: dict[str, np.ndarray]
    next_dispatch: int = 1  # dispatch ids double as the wire's Task.server_round
    inflight: dict[int, Dispatch] = field(default_factory=dict)
    references: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)  # node -> dispatch whose model it holds (downlink deltas)
    buffer: list[BufferedUpdate] = field(default_factory=list)
    clock_s: float = 0.0  # the fleet's clock at the last step (resume continues from it)
    latest_norms: dict[int, float] = field(default_factory=dict)  # node -> L2 norm of its last applied update

    def prune_references(self) -> None:
        """Forget the decoded models no in-flight dispatch or holding device needs."""
        needed = {d.reference for d in self.inflight.values()} | {f"d{d}" for d in self.held.values()}
        for key in [k for k in self.references if k not in needed]:
            del self.references[key]

    def to_checkpoint(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(description, arrays)``: JSON-able data and the arrays it names."""
        arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in self.model.items()}
        for key, ref in self.references.items():
            arrays.update({f"ref/{key}/{k}": v for k, v in ref.items()})
        buffer = []
        for i, entry in enumerate(self.buffer):
            arrays.update({f"buffer/{i}/{k}": v for k, v in entry.delta.items()})
            item = asdict(entry)
            item["delta"] = sorted(entry.delta)
            buffer.append(item)
        description = {
            "version": self.version,
            "next_dispatch": self.next_dispatch,
            "clock_s": self.clock_s,
            "model": sorted(self.model),
            "inflight": {str(d): asdict(v) for d, v in self.inflight.items()},
            "references": {key: sorted(ref) for key, ref in self.references.items()},
            "held": {str(n): d for n, d in self.held.items()},
            "buffer": buffer,
            "latest_norms": {str(n): v for n, v in self.latest_norms.items()},
        }
        return description, arrays

    @classmethod
    def from_checkpoint(cls, description: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> AsyncState:
        """The state :meth:`to_checkpoint` described (``KeyError`` names a missing array)."""
        buffer = []
        for i, item in enumerate(description["buffer"]):
            values = dict(item)
            values["delta"] = {k: np.asarray(arrays[f"buffer/{i}/{k}"]) for k in item["delta"]}
            buffer.append(BufferedUpdate(**values))
        return cls(
            version=int(description["version"]),
            model={k: np.asarray(arrays[f"model/{k}"]) for k in description["model"]},
            next_dispatch=int(description["next_dispatch"]),
            inflight={int(d): Dispatch(**v) for d, v in description["inflight"].items()},
            references={
                key: {k: np.asarray(arrays[f"ref/{key}/{k}"]) for k in names}
                for key, names in description["references"].items()
            },
            held={int(n): int(d) for n, d in description["held"].items()},
            buffer=buffer,
            clock_s=float(description["clock_s"]),
            latest_norms={int(n): float(v) for n, v in description.get("latest_norms", {}).items()},
        )
