"""Flower's robust rules on sparse uplinks: refused, naming fedge's sparse-aware rule.

A top-k or random-k uplink decodes to updates that are exactly 0 on every coordinate a
device did not send. Flower's FedMedian and FedTrimmedAvg then take medians of mostly-zero
columns and its Krum, MultiKrum and Bulyan score the smallest updates as the most
central (measured on digits, top-k, no attack: 11 to 80 pp below FedAvg). fedge's
sparse-aware rules (:mod:`fedge.strategies.delta_aggregation` and its subclasses) take
each coordinate's senders only; on dense updates they are the textbook rules.

A config naming one of Flower's rules with a sparse uplink is refused, with the rule to
use instead (same parameters), rather than swapped silently: the run's saved config
(``.hydra/config.yaml``, ``results.json``) keeps naming the class that ran, as Hydra's
``_target_`` promises, and a result is never a rule the user did not ask for.
``server.allow_flower_robust_on_sparse=true`` runs Flower's rule anyway (to show the
collapse, as ``bench.robustness`` does).
"""

from __future__ import annotations

from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from fedge.protos.codecs.base import make_codec
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.codecs.sparse import RandomKCodec, TopKCodec

#: Flower's rule (subclasses first: Krum is a MultiKrum) -> ``strategy=`` of fedge's
#: sparse-aware rule with the same parameters.
SPARSE_AWARE: tuple[tuple[type[Strategy], str], ...] = (
    (FedMedian, "sparse_median"),
    (FedTrimmedAvg, "sparse_trimmed_avg"),
    (Krum, "sparse_krum"),
    (MultiKrum, "sparse_multikrum"),
    (Bulyan, "sparse_bulyan"),
)


def sparse_aware_name(strategy: Strategy) -> str | None:
    """``strategy=`` of the sparse-aware rule to use instead of ``strategy``; None if it needs none."""
    return next((name for rule, name in SPARSE_AWARE if isinstance(strategy, rule)), None)


def is_sparse_uplink(uplink: UplinkPlan) -> bool:
    """Whether devices send only some coordinates of each update (top-k, random-k)."""
    return isinstance(make_codec(uplink.codec), (TopKCodec, RandomKCodec))


def check_rule_fits_uplink(strategy: Strategy, uplink: UplinkPlan, allow: bool) -> None:
    """Raise ``ValueError`` (one line, naming the rule to use) if ``strategy`` is one of
    Flower's robust rules and ``uplink`` is sparse, unless ``allow``."""
    replacement = sparse_aware_name(strategy)
    if replacement is None or allow or not is_sparse_uplink(uplink):
        return
    name = type(strategy).__name__
    raise ValueError(
        f"Flower's {name} treats the coordinates a {uplink.codec.name} device did not send as zeros and collapses "
        f"(median of mostly-zero columns / smallest update chosen); use strategy={replacement} (the same rule over "
        "each coordinate's senders, same parameters), or server.allow_flower_robust_on_sparse=true to run Flower's anyway"
    )
