"""ReputationScreen: FLTrust's server-reference score, accumulated per device across rounds.

FLTrust's screen (:mod:`fedge.strategies.fltrust`, ``rescale=false trust_weighted=false``)
decides every round afresh: an update whose cosine to the server's reference update is
<= 0 is out. On sparse top-k updates of non-IID devices that per-round score is noisy:
measured on digits (top-k, 20% attackers, 30 rounds) it zeroed 9-23 of ~240 honest
updates a run, and let an IPM or label-flip update through now and then. Attackers in a
fleet are, however, *persistent identities*: the same devices attack round after round.
This rule keeps evidence per device (node id) and decides on it:

1. **score** (per round, per replying device): the cosine between the device's update and
   the server's reference update, both taken on the coordinates the device *sent* (its
   non-zero decoded coordinates: all of them for dense codecs, its ``k`` for top-k), so a
   top-k update is not marked down for the coordinates it did not send; in [-1, 1];
2. **reputation**: an exponential moving average of the device's scores over the rounds
   it replied in, ``r <- memory x r + (1 - memory) x score`` (its first score as is);
3. **decision**: while the device has fewer than ``warmup_rounds`` scores, this round's
   score alone screens it (FLTrust's screen: score <= 0 = excluded); afterwards it is
   excluded while its reputation is below the round's robust threshold
   ``median - max(mad_factor x 1.4826 x MAD, min_gap)`` of the reputations of the
   replying devices past warm-up (needs 3 of them; fewer: the per-round screen goes on;
   ``min_gap``: when the honest devices agree closely, a small dip is no outlier), or
   not above ``min_reputation`` (default 0: on average it does not agree with the server's
   reference at all; late in a run, when every update is mostly noise and the honest
   spread widens, this floor is what keeps a label flipper out). An honest device
   whose update points away from the reference in one round keeps its place; a device
   that keeps pointing away (sign-flip, IPM) or keeps disagreeing (label flip) falls
   below the honest population and stays out while it does. Exclusion is not a ban: a
   device whose reputation climbs back above the threshold is averaged again.

The kept updates, bounded by ``clip`` (default: 2x the round's median norm; a scaled
update gains nothing), are averaged by examples at their own magnitude, as FedAvg.
Every replying device's decision, with its round score, reputation and the threshold,
goes to :attr:`decisions` (``results.json`` ``robust``, the report), as for FLTrust.

**State.** The reputation ledger (:class:`ReputationLedger`: node ids, reputations,
rounds scored) is held as three numpy arrays on the strategy, so
:mod:`fedge.server.strategy_state` checkpoints and restores it with the rest of the
strategy's state (fedge-server's ``server.resume``), as FedAvgM's momentum is. Devices that never
reply keep no entry; a device's entry is never aged out.

Written by hand: Flower 1.41 has no reputation or history-based rule (its robust
strategies use one round's replies only). Related published rules: FLTrust's reference
score (Cao et al., NDSS 2021), history-aware detection (FLDetector, Zhang et al., KDD
2022; FoolsGold's per-client history, Fung et al., RAID 2020); this is the simplest
combination of the first with a per-device moving average, chosen because it needs no
extra model state per device (one float) and composes with any codec.

Measured (``python -m bench.robustness``, digits, 10 non-IID devices, 20% attackers,
top-k, 3 seeds, 30 rounds, ``root_examples=300``): worst-seed gap to clean FedAvg 0.6 pp
(no attack), 1.1 (sign-flip), -0.3 (scaling), 0.6 (ALIE), 1.1 (IPM), 1.4 (label flip),
1.4 (backdoor), with 0.3-2 honest (device, round) exclusions a run under attack instead
of FLTrust screen's 10-13. At 20 rounds the backdoor row is 2.2 (its updates agree with
the reference; the rule rarely catches them). README, robustness section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.strategies.delta_aggregation import RobustDecision
from fedge.strategies.fltrust import FLTrust

#: The robust threshold needs this many devices past warm-up (a median of fewer is anybody's).
MIN_DEVICES_FOR_THRESHOLD = 3
#: Scales a median absolute deviation to a normal standard deviation.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ReputationLedger:
    """Every device's accumulated evidence: row ``i`` is device ``nodes[i]``.

    ``nodes`` ``(m,)`` int64 node ids (sorted); ``reputation`` ``(m,)`` float64, the moving
    average of the device's per-round scores, in [-1, 1]; ``rounds`` ``(m,)`` int64, how
    many rounds it was scored in.
    """

    nodes: np.ndarray
    reputation: np.ndarray
    rounds: np.ndarray

    @classmethod
    def empty(cls) -> ReputationLedger:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64))

    def updated(self, nodes: list[int], scores: np.ndarray, memory: float) -> ReputationLedger:
        """The ledger after one round in which ``nodes`` were scored ``scores`` ``(n,)``
        (a new device starts at its score; a known one moves ``1 - memory`` of the way)."""
        known = {int(node): i for i, node in enumerate(self.nodes)}
        entries = {int(node): (float(r), int(c)) for node, r, c in zip(self.nodes, self.reputation, self.rounds)}
        for node, score in zip(nodes, scores):
            if node in known:
                reputation, count = entries[node]
                entries[node] = (memory * reputation + (1.0 - memory) * float(score), count + 1)
            else:
                entries[node] = (float(score), 1)
        order = sorted(entries)
        return ReputationLedger(
            np.array(order, dtype=np.int64),
            np.array([entries[n][0] for n in order], dtype=np.float64),
            np.array([entries[n][1] for n in order], dtype=np.int64),
        )

    def lookup(self, nodes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(reputation, rounds)`` ``(n,)`` of ``nodes`` (each must be in the ledger)."""
        index = {int(node): i for i, node in enumerate(self.nodes)}
        rows = np.array([index[node] for node in nodes], dtype=np.int64)
        return self.reputation[rows], self.rounds[rows]


def sent_cosines(deltas: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(n,)``: each update's cosine to ``reference`` ``(d,)`` on the coordinates it sent
    (non-zero); 0 for a zero update or a reference that is zero there."""
    sent = deltas != 0.0
    norms = np.linalg.norm(deltas, axis=1)
    ref_norms = np.sqrt(sent.astype(np.float64) @ (reference * reference))
    denominator = norms * ref_norms
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, (deltas @ reference) / safe, 0.0)


def robust_threshold(reputations: np.ndarray, mad_factor: float, min_gap: float) -> tuple[float, float, float]:
    """``(threshold, median, mad)``: ``median - max(mad_factor x 1.4826 x MAD, min_gap)`` of ``reputations``."""
    median = float(np.median(reputations))
    mad = float(np.median(np.abs(reputations - median)))
    return median - max(mad_factor * MAD_TO_SIGMA * mad, min_gap), median, mad


class ReputationScreen(FLTrust):
    """FedAvg of the devices whose accumulated reference score is not an outlier below.

    Parameters (beyond FLTrust's ``root_examples``, ``reference`` and DeltaAggregation's ``clip``)
    ---------------------------------------------------------------------------------------------
    memory:
        Weight of the past in the moving average, in [0, 1). The reputation's window is
        about ``1 / (1 - memory)`` rounds. Tuning: higher = steadier against honest noise
        but slower to catch a device that turns bad mid-run (with 0.8, a device at +0.3
        that starts sending -0.3 drops below +0.1 after 2 rounds); 0 = per-round scores.
    warmup_rounds:
        Rounds a device is scored before its reputation decides (>= 1); until then the
        per-round screen (score <= 0 = excluded) applies. Tuning: 2-5; shorter lets
        round-1 noise (an untrained model's reference is noisy) decide.
    mad_factor:
        The threshold's distance below the median reputation, in robust standard
        deviations (> 0). Tuning: 2-3; lower excludes honest skewed (non-IID) devices,
        higher lets through attackers that disagree mildly (label flip).
    min_gap:
        The least distance below the median reputation that counts as an outlier, in
        cosine units (>= 0). Tuning: 0.05-0.2; without it, a population in close agreement
        (tiny MAD) excludes an honest device for one bad round. On digits (top-k) honest
        reputations spread ~0.1 around a median of 0.2-0.45, so 0.1 rarely binds there.
    min_reputation:
        Excluded while the reputation is not above this, in [-1, 1) (-1 = no floor).
    """

    def __init__(self, *args: object, memory: float = 0.9, warmup_rounds: int = 3, mad_factor: float = 3.0,
                 min_gap: float = 0.1, min_reputation: float = 0.0, clip: str = "median", **kwargs: object) -> None:
        super().__init__(*args, clip=clip, rescale=False, trust_weighted=False, **kwargs)  # type: ignore[arg-type]
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"memory must be in [0, 1), got {memory!r}")
        if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, int) or warmup_rounds < 1:
            raise ValueError(f"warmup_rounds must be an integer >= 1, got {warmup_rounds!r}")
        if not mad_factor > 0:
            raise ValueError(f"mad_factor must be > 0, got {mad_factor!r}")
        if not min_gap >= 0:
            raise ValueError(f"min_gap must be >= 0, got {min_gap!r}")
        if not -1.0 <= min_reputation < 1.0:
            raise ValueError(f"min_reputation must be in [-1, 1), got {min_reputation!r}")
        self.memory, self.warmup_rounds, self.mad_factor = memory, warmup_rounds, mad_factor
        self.min_gap, self.min_reputation = min_gap, min_reputation
        # the ledger as plain arrays (checkpointed by fedge.server.strategy_state); read it as self.ledger
        empty = ReputationLedger.empty()
        self.ledger_nodes, self.ledger_reputation, self.ledger_rounds = empty.nodes, empty.reputation, empty.rounds

    @property
    def ledger(self) -> ReputationLedger:
        """Every device's reputation so far."""
        return ReputationLedger(self.ledger_nodes, self.ledger_reputation, self.ledger_rounds)

    @ledger.setter
    def ledger(self, ledger: ReputationLedger) -> None:
        self.ledger_nodes, self.ledger_reputation, self.ledger_rounds = ledger.nodes, ledger.reputation, ledger.rounds

    def aggregate_deltas(self, server_round: int, nodes: list[int], deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        reference = self.reference_delta(server_round)
        deltas = self._bound(server_round, nodes, deltas)
        scores = sent_cosines(deltas, reference)
        self.ledger = self.ledger.updated(nodes, scores, self.memory)
        reputation, rounds = self.ledger.lookup(nodes)
        settled = rounds >= self.warmup_rounds
        threshold: float | None = None
        rule = ""
        if settled.sum() >= MIN_DEVICES_FOR_THRESHOLD:
            threshold, median, mad = robust_threshold(reputation[settled], self.mad_factor, self.min_gap)
            rule = f"threshold {threshold:.3f} = median {median:.3f} - max({self.mad_factor} x 1.4826 x MAD {mad:.3f}, {self.min_gap})"
        keep = np.ones(len(nodes), dtype=bool)
        for i, node in enumerate(nodes):
            seen = f"score {scores[i]:.3f} this round, reputation {reputation[i]:.3f} over {rounds[i]} rounds"
            if settled[i] and threshold is not None:
                floor = reputation[i] > self.min_reputation
                keep[i] = floor and reputation[i] >= threshold
                reason = (f"{seen}: {'>=' if reputation[i] >= threshold else '<'} {rule}"
                          + ("" if floor else f"; not above min_reputation {self.min_reputation}"))
            else:
                keep[i] = scores[i] > 0.0
                reason = f"{seen}: warm-up, this round's score {'> 0' if keep[i] else '<= 0'} decides"
            self.decisions.append(RobustDecision(server_round, node, "kept" if keep[i] else "excluded", reason, float(reputation[i])))
        if not keep.any():
            self.decisions.append(RobustDecision(server_round, -1, "excluded", "every update was excluded: the model does not move", 0.0))
            return np.zeros(deltas.shape[1])
        return np.asarray((weights[keep, None] * deltas[keep]).sum(axis=0) / weights[keep].sum())
