"""One validator for every device reply, whichever backend carried it.

A reply reaches a Flower strategy only after :class:`ReplyValidator` has checked every
field the device chose (the tensors themselves were checked by the safe decoder:
names, shapes, dtypes, finite values, size). :class:`~fedge.strategies.compressed.CompressedStrategy`
runs it, so ``fedge-sim`` (local, ray, grpc backends) and ``fedge-server`` share it.

Per reply (:meth:`ReplyValidator.check_metrics`, :func:`update_norm`):

* metrics: at most ``max_metrics`` keys of at most ``max_metric_key_chars`` characters,
  each value a finite int or float (not a bool, not a list);
* the weighting key (``num-examples``, the inner strategy's ``weighted_by_key``): present,
  an integer >= 1; a claim above ``max_num_examples`` is *capped* to it (the reply is
  kept, weighted as an honest device at the cap, and the cap is recorded);
* the decoded update's L2 norm (all tensors, float64): finite.

Per round (:meth:`ReplyValidator.screen`):

* the update-norm bound: ``min(fixed, max_update_norm_median x median norm of the
  round)``. ``fixed`` is ``max_update_norm`` or, when that is 0, ``AUTO_NORM_FACTOR x
  max(1, ||global model||)``; the median rule needs ``MIN_REPLIES_FOR_MEDIAN`` replies
  (a median of one or two is whatever the attacker sends). A reply above the bound is
  dropped (not clipped: a device that sends 1e30 is not an honest device with a big step);
* metric keys: Flower's strategies refuse (``InconsistentMessageReplies``) replies whose
  MetricRecords differ in keys. Honest devices of different fedge versions do differ
  (a newer one reports a metric an older one does not), so the round aggregates the keys
  every kept reply has (the intersection) and trims the rest; a reply is never dropped
  for an extra or a missing optional key, only for a missing weighting key. The cost: one
  device can hide an optional metric (say ``train_loss``) for a round; it could always
  skew its average anyway, and the model is untouched.

Every refusal carries a reason (``DroppedReply`` in results.json); every adjustment (cap,
trimmed keys) is recorded too. Tuning: raise ``max_update_norm_median`` if honest devices'
update norms differ by more than ~10x (very unequal local work); set ``max_update_norm``
to a measured honest norm x a few to bound small rounds too; set ``max_num_examples``
to the largest honest data set (``fedge-sim`` uses the largest partition).

Written here because Flower validates only the *shape* of replies
(``validate_message_reply_consistency``: one ArrayRecord, one MetricRecord, same keys)
and raises instead of dropping; it checks no value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Union

import numpy as np

#: The weighting key Flower's strategies use unless told otherwise.
DEFAULT_WEIGHT_KEY = "num-examples"
#: With ``max_update_norm = 0``, the fixed bound is this many times ``max(1, ||global model||)``.
AUTO_NORM_FACTOR = 100.0
#: The median-relative bound applies from this many replies in a round.
MIN_REPLIES_FOR_MEDIAN = 3


#: What a MetricRecord may hold (the validator keeps only the scalars).
MetricValue = Union[int, float, list[int], list[float]]


class ReplyRejected(ValueError):
    """A reply that fails validation; the message is the recorded reason."""


@dataclass(frozen=True)
class ReplyPolicy:
    """What a reply may claim. Units: examples (counts), L2 norms in model units.

    Attributes
    ----------
    max_num_examples:
        Largest weight a reply may claim (examples); larger claims are capped to it.
        0 = no cap (only: a positive integer).
    max_update_norm:
        Fixed bound on a decoded update's L2 norm; 0 = ``AUTO_NORM_FACTOR x max(1,
        ||global model||)``; ``inf`` = none.
    max_update_norm_median:
        Drop updates whose norm exceeds this multiple of the round's median update norm
        (from ``MIN_REPLIES_FOR_MEDIAN`` replies on); 0 = off.
    weight_key:
        The metric the strategy weights by (Flower's ``weighted_by_key``); empty = the
        wrapped strategy's ``weighted_by_key`` (CompressedStrategy fills it in), else ``num-examples``.
    max_metrics, max_metric_key_chars:
        Bounds on a reply's MetricRecord (a fedge device sends ~15 keys; QAT adds two per layer).
    """

    max_num_examples: int = 0
    max_update_norm: float = 0.0
    max_update_norm_median: float = 10.0
    weight_key: str = ""
    max_metrics: int = 1024
    max_metric_key_chars: int = 256

    def __post_init__(self) -> None:
        if self.max_num_examples < 0:
            raise ValueError(f"max_num_examples must be >= 0, got {self.max_num_examples}")
        if not self.max_update_norm >= 0:
            raise ValueError(f"max_update_norm must be >= 0 (0 = derived from the model), got {self.max_update_norm}")
        if not (self.max_update_norm_median == 0 or self.max_update_norm_median >= 1):
            raise ValueError(f"max_update_norm_median must be 0 (off) or >= 1, got {self.max_update_norm_median}")


@dataclass
class Candidate:
    """One reply that passed the per-reply checks, waiting for the round's checks."""

    node_id: int
    metrics: dict[str, MetricValue]
    norm: float = 0.0  # L2 norm of the decoded update (0 for evaluation replies)
    notes: list[str] = field(default_factory=list)  # adjustments made (cap, trimmed keys)


@dataclass
class Screened:
    """The round's verdict: candidates kept (possibly adjusted) and ``(node, reason)`` dropped."""

    kept: list[Candidate]
    dropped: list[tuple[int, str]]


def update_norm(delta: Mapping[str, np.ndarray]) -> float:
    """L2 norm of a whole update over every tensor, in float64 (1e30 entries do not overflow).

    Summed by ``np.einsum`` rather than ``np.dot``: BLAS's dot splits a long vector over
    its threads, so its last bits depend on the thread count, and on a busy machine waking
    those threads cost ~10 ms per call (a server's whole per-reply budget); einsum's
    loop is single-threaded, the same on every machine, and ~30 us for 38k values."""
    total = 0.0
    for value in delta.values():
        flat = np.asarray(value, dtype=np.float64).ravel()
        total += float(np.einsum("i,i->", flat, flat))
    return math.sqrt(total)


class ReplyValidator:
    """Applies a :class:`ReplyPolicy` to the replies of a round (see the module docstring)."""

    def __init__(self, policy: ReplyPolicy | None = None) -> None:
        policy = policy or ReplyPolicy()
        self.policy = policy if policy.weight_key else replace(policy, weight_key=DEFAULT_WEIGHT_KEY)

    def check_metrics(self, metrics: Mapping[str, object]) -> tuple[dict[str, MetricValue], list[str]]:
        """``(clean metrics, notes)``; raises :class:`ReplyRejected` with the reason."""
        policy = self.policy
        if len(metrics) > policy.max_metrics:
            raise ReplyRejected(f"{len(metrics)} metrics, at most {policy.max_metrics} allowed")
        clean: dict[str, int | float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key or len(key) > policy.max_metric_key_chars or not key.isprintable():
                raise ReplyRejected(f"metric key {str(key)[:40]!r} is not a printable name of 1..{policy.max_metric_key_chars} characters")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReplyRejected(f"metric {key!r} is a {type(value).__name__}, not a number")
            if not math.isfinite(value):
                raise ReplyRejected(f"metric {key!r} is {value}, not finite")
            clean[key] = value
        notes: list[str] = []
        weight = clean.get(policy.weight_key)
        if weight is None:
            raise ReplyRejected(f"metric {policy.weight_key!r} is missing")
        if weight != int(weight) or weight < 1:
            raise ReplyRejected(f"{policy.weight_key} = {weight!r} is not a positive integer")
        if policy.max_num_examples and weight > policy.max_num_examples:
            notes.append(f"{policy.weight_key} {weight:g} capped to {policy.max_num_examples}")
            weight = policy.max_num_examples
        clean[policy.weight_key] = int(weight) if isinstance(metrics[policy.weight_key], int) else float(int(weight))
        return dict(clean), notes

    def norm_bound(self, norms: list[float], model_norm: float) -> float:
        """The round's bound on update norms (``inf`` = none)."""
        policy = self.policy
        bound = policy.max_update_norm or AUTO_NORM_FACTOR * max(1.0, model_norm)
        if policy.max_update_norm_median and len(norms) >= MIN_REPLIES_FOR_MEDIAN:
            bound = min(bound, policy.max_update_norm_median * statistics.median(norms))
        return bound

    def screen(self, candidates: list[Candidate], model_norm: float | None = None) -> Screened:
        """Apply the round's checks: norm bound (when ``model_norm`` is given: training
        replies) and one metric key set for every kept reply."""
        dropped: list[tuple[int, str]] = []
        kept = candidates
        if model_norm is not None:
            finite = [c for c in candidates if math.isfinite(c.norm)]
            bound = self.norm_bound([c.norm for c in finite], model_norm)
            kept = []
            for candidate in candidates:
                if not candidate.norm <= bound:
                    dropped.append((candidate.node_id, f"update norm {candidate.norm:.4g} exceeds the round's bound {bound:.4g}"))
                else:
                    kept.append(candidate)
        if kept:
            shared = set.intersection(*(set(c.metrics) for c in kept))
            for candidate in kept:
                extra = sorted(set(candidate.metrics) - shared)
                if extra:
                    candidate.notes.append(f"metrics not sent by every device this round trimmed: {extra[:8]}")
                    candidate.metrics = {k: v for k, v in candidate.metrics.items() if k in shared}
        return Screened(kept, dropped)
