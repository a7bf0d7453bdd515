"""A run's outputs, written the same way by ``fedge-sim`` and ``fedge-server``.

``results.json``: the resolved config, the final and per-round :class:`RoundRecord`s,
the replies the decoder refused, transport figures (gRPC runs), per-client totals
(simulations) and the last round's averaged LSQ steps (``qat``, read by
``fedge-export``); ``final_model.npz``: the global model's arrays by state name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fedge.client.qat_steps import final_steps
from fedge.server.federation import FederationResult
from fedge.strategies.compressed import CompressedStrategy, CompressionLog
from fedge.strategies.delta_aggregation import DeltaAggregation

RESULTS_FILE = "results.json"
MODEL_FILE = "final_model.npz"


def final_weights(result: FederationResult) -> dict[str, np.ndarray]:
    """The final global model as numpy arrays, by state name."""
    return {k: v.numpy() for k, v in result.final_arrays.items()}


def robust_section(compressed: CompressedStrategy) -> dict[str, Any]:
    """results.json's ``robust``: every update a robust rule clipped, excluded or kept
    after scoring, per round and device, with its reason (and score where the rule has
    one); empty for rules that make no per-device decision. The same for ``fedge-sim``
    and ``fedge-server``."""
    rule = compressed.strategy
    if isinstance(rule, DeltaAggregation):
        return {"robust": [asdict(d) for d in rule.decisions]}
    return {}


def write_results(
    out_dir: Path,
    cfg: DictConfig,
    result: FederationResult,
    dropped_log: CompressionLog,
    transport: Mapping[str, Any],
    clients: Mapping[str, Mapping[str, Any]] | None = None,
    sections: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``results.json`` and ``final_model.npz`` into ``out_dir``; the results path.

    ``transport`` is the Grid's :meth:`~fedge.server.grid.FedgeGrid.transport_report`;
    ``clients`` per-client totals by node id (left out when ``None``); ``sections``
    further top-level entries (``secagg``, ``privacy``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "final": asdict(result.final),
        "rounds": [asdict(r) for r in result.rounds],
        "dropped_replies": [asdict(d) for d in dropped_log.dropped],
        "adjusted_replies": [asdict(a) for a in dropped_log.adjusted],  # num-examples capped, metric keys trimmed
        **transport,
    }
    if clients is not None:
        payload["clients"] = dict(clients)
    payload.update(sections or {})
    payload["qat"] = final_steps(result.flower_result.train_metrics_clientapp)  # LSQ steps for fedge-export
    path = out_dir / RESULTS_FILE
    path.write_text(json.dumps(payload, indent=2))
    weights: dict[str, Any] = final_weights(result)
    np.savez(out_dir / MODEL_FILE, **weights)
    return path
