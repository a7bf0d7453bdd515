"""Strategies that cannot run under secure aggregation, and why.

Secure aggregation shows the server only the sum of the devices' updates. Any strategy
(or wrapper) that looks at each update on its own is refused when it is anywhere in the
chain of wrapped strategies (``.strategy`` links), with the reason.
"""

from __future__ import annotations

from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

_WHY: dict[type, str] = {
    FedMedian: "takes the coordinate-wise median of the individual updates",
    FedTrimmedAvg: "trims the largest and smallest individual values of each coordinate",
    Krum: "scores each update by its distances to the other individual updates",
    MultiKrum: "scores each update by its distances to the other individual updates",
    Bulyan: "selects and trims individual updates (Krum, then a trimmed mean)",
    QFedAvg: "reweights each update by its own loss",
    DifferentialPrivacyServerSideFixedClipping: "clips each update on the server (clip on the devices: "
    "DifferentialPrivacyClientSideFixedClipping)",
    DifferentialPrivacyServerSideAdaptiveClipping: "clips each update on the server",
    DifferentialPrivacyClientSideAdaptiveClipping: "needs each device's clipping indicator to adapt the norm",
}


def refuse_individual_update_strategies(strategy: Strategy) -> None:
    """Raise ``ValueError`` if ``strategy`` or one it wraps needs the individual updates."""
    current: object | None = strategy
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for cls, why in _WHY.items():
            if isinstance(current, cls):
                raise ValueError(
                    f"secure aggregation cannot run {type(current).__name__}: it {why}, and under secure "
                    "aggregation the server only ever sees the sum of the updates"
                )
        current = vars(current).get("strategy")  # the wrapped strategy, if this is a wrapper
