"""FLTrust: trust-weighted FedAvg against a server-side reference update (Cao et al., NDSS 2021).

The server keeps a small clean *root dataset* and, every round, trains the current global
model on it with the devices' own local settings: that is the round's reference update
``g0``. Each device's update ``g_i`` (decoded and densified, so a top-k update is its ``k``
sent coordinates and zeros elsewhere) gets

- a trust score ``TS_i = ReLU(cos(g_i, g0))`` in [0, 1]: an update pointing away from the
  server's own update (sign-flip, IPM, most label-flip updates) gets 0 and is out;
- its magnitude rescaled to the reference's: ``g_i * ||g0|| / ||g_i||`` (a scaled or
  boosted update gains nothing);

and the round's update is the trust-weighted mean ``sum_i TS_i * rescaled_i / sum_i TS_i``
(examples do not weight it: a device's declared ``num-examples`` cannot buy influence).
If every trust score is 0 the model does not move that round.

Two switches turn the paper's rule into its screen alone (``rescale=false
trust_weighted=false``, ``strategy=fltrust_screen``): updates with trust 0 are excluded,
the rest averaged by examples at their own magnitude (after the median norm bound of
``clip``), i.e. FedAvg screened against the server's reference instead of against the
replies' median. Why: on digits (top-k, 30 rounds) the paper's rescaling and trust
weighting cost accuracy with no attacker at all (README, robustness section).

Why it composes with top-k: the score compares each update with a reference the server
computed itself, not with a statistic of the replies, so a lone attacker's private top-k
coordinates are never its own yardstick (the weakness of the cosine-to-median screen in
:mod:`fedge.strategies.delta_aggregation`). An honest top-k update keeps the largest
coordinates of an honest direction, so its cosine to the dense reference stays positive.

The reference update is injected, not computed here (strategies import no task and no
torch): a callable ``reference(global_model, server_round) -> trained_model`` taking and
returning the model as named float arrays. ``fedge-sim`` and ``fedge-server`` build it
from the task (:mod:`fedge.conf.server_reference`): ``root_examples`` examples drawn,
seeded, from the task's training pool (the data devices are partitioned from), never from
the test split accuracy is measured on. The default 100 follows the paper (MNIST, 60,000
training examples, thousands of rounds). Measured on digits (1,437 training examples,
top-k, 30 rounds): 100 root examples left the model at 0.33-0.40 accuracy without attack
(the reference is noisy and short, and every update is shrunk to its norm); 300 reach
0.90-0.91, still 4-6 pp under FedAvg; the screen alone (``rescale=false
trust_weighted=false``) is within 1.1 pp (bench/results/robustness.md).

Written by hand: Flower 1.41 ships no FLTrust (its robust strategies are Krum, MultiKrum,
Bulyan, FedMedian and FedTrimmedAvg, all statistics of the replies only). Every device's
trust score, and whether it was zeroed, is kept in :attr:`decisions` (``results.json``
``robust``, the report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fedge.strategies.delta_aggregation import DeltaAggregation, RobustDecision

#: ``reference(global_model, server_round)``: the global model (named arrays) after training on the root dataset.
ReferenceUpdate = Callable[[Mapping[str, np.ndarray], int], Mapping[str, np.ndarray]]


class FLTrust(DeltaAggregation):
    """Trust-weighted mean of updates rescaled to a server reference update's norm.

    Parameters (beyond FedAvg's)
    ----------------------------
    root_examples:
        Size of the server's root dataset (examples), read by whoever builds the
        reference (:mod:`fedge.conf.server_reference`); >= 1. Tuning: 100 is the paper's
        default; fewer make the reference noisier (honest updates score lower), more cost
        server compute each round (one local round on them).
    reference:
        The reference-update callable (see the module doc); may be attached later with
        :meth:`use_reference` (the builders do, once the task is loaded).
    rescale:
        Scale every update to the reference's norm (the paper; default). False: keep each
        update's own magnitude (then bound it with ``clip``).
    trust_weighted:
        Weight the mean by trust (the paper; default). False: trust only screens (0 =
        excluded) and the kept updates are averaged by examples, as FedAvg.
    """

    def __init__(self, *args: object, root_examples: int = 100, reference: ReferenceUpdate | None = None,
                 rescale: bool = True, trust_weighted: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if isinstance(root_examples, bool) or not isinstance(root_examples, int) or root_examples < 1:
            raise ValueError(f"root_examples must be an integer >= 1, got {root_examples!r}")
        if self.min_cosine > -1.0:
            raise ValueError("FLTrust scores updates against the server's reference update: min_cosine does not apply")
        if rescale and self.clip != "off":
            raise ValueError("FLTrust with rescale=true scales every update to the reference's norm: clip does not apply")
        self.root_examples = root_examples
        self.reference = reference
        self.rescale, self.trust_weighted = rescale, trust_weighted

    def use_reference(self, reference: ReferenceUpdate) -> None:
        """Attach the callable that trains the global model on the root dataset."""
        self.reference = reference

    def reference_delta(self, server_round: int) -> np.ndarray:
        """The round's reference update ``(d,)`` (float64, flattened in the global model's
        order): the global model trained on the root dataset, minus the global model."""
        if self.reference is None:
            raise RuntimeError("FLTrust has no server reference update: build it with fedge.conf.server_reference "
                               "(fedge-sim and fedge-server do), or pass reference=")
        base = self.global_model()
        trained = self.reference(base, server_round)
        return np.concatenate([np.asarray(trained[k], dtype=np.float64).ravel() - base[k].astype(np.float64).ravel() for k in base])

    def aggregate_deltas(self, server_round: int, nodes: list[int], deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
        reference = self.reference_delta(server_round)
        if not self.rescale:
            deltas = self._bound(server_round, nodes, deltas)
        trust, rescaled = trust_scores(deltas, reference)
        ref_norm = float(np.linalg.norm(reference))
        for node, score, norm in zip(nodes, trust, np.linalg.norm(deltas, axis=1)):
            zeroed = score <= 0.0
            scaled = f"; norm {norm:.4g} rescaled to the reference's {ref_norm:.4g}" if self.rescale else ""
            self.decisions.append(RobustDecision(
                server_round, node, "excluded" if zeroed else "kept",
                f"trust {score:.3f} (ReLU of the cosine to the server's reference update){': zeroed' if zeroed else ''}{scaled}",
                float(score)))
        if not trust.sum() > 0:
            self.decisions.append(RobustDecision(server_round, -1, "excluded", "every trust score was 0: the model does not move", 0.0))
            return np.zeros(deltas.shape[1])
        updates = rescaled if self.rescale else deltas
        share = trust if self.trust_weighted else weights * (trust > 0)
        return np.asarray((share[:, None] * updates).sum(axis=0) / share.sum())


def trust_scores(deltas: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLTrust's trust scores ``(n,)`` (``ReLU(cos(delta_i, reference))``; 0 for a zero
    update or reference) and the updates ``(n, d)`` rescaled to the reference's L2 norm
    (a zero update stays zero)."""
    norms = np.linalg.norm(deltas, axis=1)
    ref_norm = float(np.linalg.norm(reference))
    safe = np.where(norms > 0, norms, 1.0)
    cosine = (deltas @ reference) / (safe * ref_norm) if ref_norm > 0 else np.zeros(len(deltas))
    trust = np.where(norms > 0, np.maximum(cosine, 0.0), 0.0)
    rescaled = deltas * (ref_norm / safe)[:, None]
    return trust, rescaled
