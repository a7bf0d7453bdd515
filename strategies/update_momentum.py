"""Momentum across rounds for a selecting robust rule (Karimireddy, He and Jaggi, ICML 2021,
"Learning from history for Byzantine robust optimization"; paired with bucketing in their
ICLR 2022 paper, :mod:`~fedge.strategies.bucketing`).

A rule that keeps one (bucket's) update a round, as Krum does, carries that round's noise
and the chosen devices' data into the model whole: its accuracy varies from seed to seed
far more than FedAvg's. Averaging over rounds cuts that variance. Two places to average:

- ``device`` (:class:`DeviceMomentum`, the paper's form): the server keeps each device's
  exponential moving average of its (bounded, screened) updates, ``m_i <- beta m_i +
  (1 - beta) u_i``, and the rule runs on the ``m_i`` of the round's devices instead of
  their ``u_i``. Honest momenta are less noisy than honest updates, so they sit closer
  together and the rule loses less honest signal; an attacker's momentum is still one
  device's, so it spoils no more buckets than its update did, and a device that turns
  hostile after honest rounds moves its momentum by ``(1 - beta)`` of its attack a round
  (the rule still sees it leave the crowd).
- ``aggregate`` (:class:`AggregateMomentum`, server momentum): the rule runs on the round's
  updates as before and the model moves by the EMA of its outputs, ``m_t = beta m_{t-1} +
  (1 - beta) agg_t`` with ``m_1 = agg_1`` (no start-up bias, same step scale as the rule's
  output in steady state).

Both delay the model by about ``beta / (1 - beta)`` rounds: with few rounds keep ``beta``
small (0.5 is a 1-round delay, 0.9 a 9-round one; the paper's 0.9 is for thousands of
steps). ``beta`` 0 keeps no state and changes nothing. Measured with SparseKrum (digits,
10 non-IID devices, top-k, 20 rounds, dev seeds 3-8; ``bench/krum_tuning.py``): neither
form narrowed Krum's clean gap to FedAvg (resampled buckets of 2: mean 1.5 pp; + device
momentum 0.5: 3.2, 0.8: 8.7; + aggregate momentum 0.5: 2.1), because that gap is a bias
(far honest devices never selected), which momentum does not average away.

Written here because neither Flower nor any library we use keeps per-device state between
rounds of a strategy; it is an EMA keyed by node id, bounded in memory.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

#: ``scope`` values: where the EMA is taken.
MOMENTUM_SCOPES = ("device", "aggregate")
#: Default bound on the devices :class:`DeviceMomentum` remembers.
DEFAULT_MAX_NODES = 1024


def check_momentum(beta: float, scope: str, max_nodes: int, key: str = "strategy.momentum") -> None:
    """Refuse a bad setting with a ``ValueError`` naming the config key (``key``, ``key_scope``,
    ``key_max_nodes``)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"{key} must be a number in [0, 1) (0 = off), got {beta!r}")
    if scope not in MOMENTUM_SCOPES:
        raise ValueError(f"{key}_scope must be one of {MOMENTUM_SCOPES}, got {scope!r}")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"{key}_max_nodes must be an integer >= 1, got {max_nodes!r}")


def ema(past: np.ndarray | None, now: np.ndarray, beta: float) -> np.ndarray:
    """``beta past + (1 - beta) now``; ``now`` itself when there is no ``past`` of its shape
    (a first round, or a model whose size changed: the average restarts)."""
    if past is None or past.shape != now.shape:
        return now
    return beta * past + (1.0 - beta) * now


class DeviceMomentum:
    """Each device's EMA of its updates, keyed by node id.

    ``beta`` (float in [0, 1)): the weight of a device's past; 0 = the update itself (no
    state kept). Tuning: 0.5 for tens of rounds (a 1-round delay); larger only with many
    rounds and every device in most of them (a device's momentum is as old as its last
    round: with partial participation a rarely sampled device's momentum is stale).

    ``max_nodes`` (int >= 1): the most devices remembered; past it the least recently seen
    device is forgotten (it restarts at its next update). Memory: ``max_nodes x d x 8``
    bytes (float64; ``d`` = the model's parameter count), e.g. 1024 devices of a 100k-
    parameter model = 0.8 GB: lower it for large models.

    Only updates the rule's bounding and screening let through should reach :meth:`update`
    (a device excluded in a round keeps its state, untouched).
    """

    def __init__(self, beta: float, max_nodes: int = DEFAULT_MAX_NODES) -> None:
        check_momentum(beta, "device", max_nodes)
        self.beta = float(beta)
        self.max_nodes = max_nodes
        #: node id -> its momentum ``(d,)`` float64, least recently seen first.
        self.momenta: OrderedDict[int, np.ndarray] = OrderedDict()

    def update(self, nodes: list[int], updates: np.ndarray) -> np.ndarray:
        """The devices' momenta ``(n, d)`` float64 after this round's ``updates`` ``(n, d)``
        (row ``i`` from ``nodes[i]``, distinct ids): ``beta m + (1 - beta) u`` for a device
        seen before (with the same ``d``), ``u`` for a new one; the state keeps them."""
        if len(set(nodes)) != len(nodes) or len(nodes) != len(updates):
            raise ValueError(f"one update per distinct node expected, got {len(updates)} updates from nodes {nodes}")
        if self.beta == 0.0:
            return updates
        out = np.empty_like(updates, dtype=np.float64)
        for i, node in enumerate(nodes):
            past = self.momenta.pop(node, None)
            out[i] = ema(past, updates[i], self.beta)
            self.momenta[node] = out[i].copy()  # re-inserted: now the most recently seen
        while len(self.momenta) > self.max_nodes:
            self.momenta.popitem(last=False)
        return out


class AggregateMomentum:
    """The EMA of a rule's outputs (server momentum): ``m_t = beta m_{t-1} + (1 - beta) agg_t``,
    ``m_1 = agg_1``. ``beta`` as :class:`DeviceMomentum`'s; memory one model (``d x 8`` bytes)."""

    def __init__(self, beta: float) -> None:
        check_momentum(beta, "aggregate", DEFAULT_MAX_NODES)
        self.beta = float(beta)
        #: The last step ``(d,)`` float64; None before the first round.
        self.momentum: np.ndarray | None = None

    def step(self, aggregate: np.ndarray) -> np.ndarray:
        """The model's step ``(d,)`` for this round's rule output ``aggregate`` ``(d,)``."""
        if self.beta == 0.0:
            return aggregate
        self.momentum = np.array(ema(self.momentum, aggregate, self.beta), dtype=np.float64)
        return self.momentum.copy()
