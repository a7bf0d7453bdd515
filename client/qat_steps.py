"""The learned LSQ steps as they travel in reply metrics, read without torch.

Devices report each quantiser's step as a metric ``qat.step.<layer>.weight`` (made by
:func:`fedge.client.qat.step_metrics`); the server reads the last round's steps into
``results.json`` for ``fedge-export``. Apart from :mod:`fedge.client.qat` (which imports
torch) so the server process of a ``fedge-sim`` run needs no torch for it.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Metric-key prefix of the learned steps a client reports: ``qat.step.<layer>.weight``.
STEP_METRIC_PREFIX = "qat.step."


def steps_from_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The steps in (aggregated) client metrics, by ``<layer>.weight`` / ``<layer>.input``; ``{}`` if none."""
    return {k[len(STEP_METRIC_PREFIX):]: float(v) for k, v in metrics.items() if k.startswith(STEP_METRIC_PREFIX)}  # type: ignore[arg-type]


def final_steps(metrics_by_round: Mapping[int, Mapping[str, object]]) -> dict[str, object]:
    """The last round's aggregated steps, as a run records them: ``{"round": r, "steps": {...}}``.

    ``metrics_by_round``: the server's aggregated training metrics per round (Flower's
    ``Result.train_metrics_clientapp``). ``{}`` when no round reported steps (no QAT,
    or a strategy that does not aggregate client metrics).
    """
    for server_round in sorted(metrics_by_round, reverse=True):
        steps = steps_from_metrics(metrics_by_round[server_round])
        if steps:
            return {"round": int(server_round), "steps": steps}
    return {}
