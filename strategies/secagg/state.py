"""The server's side of one secure-aggregation round: a typed state machine (flwr-free).

Stages (each ``receive_*`` checks it is called in order, once):

``KEYS``    :meth:`SecAggServerRound.receive_keys`: advertised keys -> each device's roster
            (its neighbours that advertised);
``SHARES``  :meth:`~SecAggServerRound.receive_shares`: encrypted shares -> each device's
            bundle (shares its neighbours sent it); devices whose secrets could never be
            rebuilt (fewer than ``t`` neighbours left) are dropped now, before they mask;
``MASKED``  :meth:`~SecAggServerRound.receive_masked`: masked inputs -> unmask requests
            (per device: which neighbours survived, which dropped);
``UNMASK``  :meth:`~SecAggServerRound.receive_unmask`: revealed shares -> the exact sum of
            the survivors' integer vectors: rebuild each survivor's self-mask seed (checked
            against its commitment) and each dropped device's mask key (checked against
            its advertised public key), remove those masks;
``DONE`` / ``ABANDONED`` (with :attr:`~SecAggServerRound.abandoned` saying why).

Every reply is checked (type, round, sizes, membership; who sent it is the transport's
word, the ``answers`` mapping's key); a bad one is dropped
with a reason in :attr:`~SecAggServerRound.dropped`, a bad revealed share alone is
dropped and the rest used. A round goes on while at least ``t`` devices remain and
every secret it needs can be rebuilt from ``t`` valid shares; otherwise it is abandoned.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.protos.secagg import keys, masks, ring, shamir, subsets
from fedge.protos.secagg.aead import SEALED_BYTES
from fedge.protos.secagg.coordinates import kept_coordinates
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.params import RoundPlan, check_setup
from fedge.protos.v1 import secagg_pb2 as pb

#: Most subsets of ``t`` shares tried when some revealed shares are wrong.
MAX_RECONSTRUCTION_TRIES = 256

#: What a stage gets from each device it asked: its reply, or why none came (a string).
Answers = Mapping[int, "pb.SecAggReply | str"]


class ServerStage(enum.Enum):
    """What the round waits for next."""

    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class DroppedInput:
    """A device (or one share it revealed) left out of the round, and why."""

    node_id: int
    stage: str
    reason: str


@dataclass
class RoundOutcome:
    """Who took part at each stage (for results)."""

    sampled: int = 0
    advertised: int = 0
    shared: int = 0
    masked: int = 0
    revealed: int = 0
    dropped_before_masking: list[int] = field(default_factory=list)
    dropped_after_masking: list[int] = field(default_factory=list)


class SecAggServerRound:
    """One round of SecAgg+ on the server, from its :class:`SecAggSetup`."""

    def __init__(self, setup: pb.SecAggSetup) -> None:
        self.plan: RoundPlan = check_setup(setup)
        self.stage = ServerStage.KEYS
        self.dropped: list[DroppedInput] = []
        self.abandoned: str | None = None
        self.outcome = RoundOutcome(sampled=len(self.plan.participants))
        self._keys: dict[int, pb.AdvertiseKeys] = {}
        self._rosters: dict[int, tuple[int, ...]] = {}
        self._commitments: dict[int, bytes] = {}  # node -> its seed commitment
        self._sealed: dict[int, dict[int, bytes]] = {}  # sender -> {receiver: sealed share pair}
        self._masked_with: dict[int, tuple[int, ...]] = {}
        self._masked: dict[int, np.ndarray] = {}
        self._asked: dict[int, tuple[int, ...]] = {}  # node -> the neighbours its unmask request names
        self.total: np.ndarray | None = None

    @property
    def round(self) -> int:
        return self.plan.server_round

    def setup_request(self) -> pb.SecAggRequest:
        """Stage 1's request, the same for every participant."""
        self._require(ServerStage.KEYS)
        return pb.SecAggRequest(setup=self.plan.setup)

    # -- stage 1 ----------------------------------------------------------------------
    def receive_keys(self, answers: Answers) -> dict[int, pb.SecAggRequest]:
        """Advertised keys -> ``{node: roster request}``."""
        self._require(ServerStage.KEYS)
        for node, answer in self._answers(answers, self.plan.participants, "keys"):
            keys_msg = answer.keys
            try:
                self._check_round(keys_msg.server_round)
                keys.parse_public_key(keys_msg.cipher_public_key)
                keys.parse_public_key(keys_msg.mask_public_key)
            except (SecAggError, ValueError) as exc:
                self._drop(node, "keys", str(exc))
                continue
            self._keys[node] = keys_msg
        self.outcome.advertised = len(self._keys)
        requests: dict[int, pb.SecAggRequest] = {}
        for node in self._keys:
            roster = tuple(v for v in self.plan.neighbours[node] if v in self._keys)
            if len(roster) < self.plan.threshold:
                self._drop(node, "keys", f"only {len(roster)} of its neighbours advertised keys; t = {self.plan.threshold}")
                continue
            self._rosters[node] = roster
            public_keys = b"".join(self._keys[v].cipher_public_key + self._keys[v].mask_public_key for v in roster)
            requests[node] = pb.SecAggRequest(
                roster=pb.KeyRoster(
                    server_round=self.round,
                    advertised=subsets.encode(roster, self.plan.neighbours[node]),
                    public_keys=public_keys,
                )
            )
        return self._advance(ServerStage.SHARES, requests, "advertised keys")

    # -- stage 2 ----------------------------------------------------------------------
    def receive_shares(self, answers: Answers) -> dict[int, pb.SecAggRequest]:
        """Encrypted shares -> ``{node: bundle request}`` for the devices that go on to mask."""
        self._require(ServerStage.SHARES)
        for node, answer in self._answers(answers, self._rosters, "shares"):
            try:
                self._sealed[node] = self._check_shares(node, answer.shares)
            except (SecAggError, ValueError) as exc:
                self._drop(node, "shares", str(exc))
                continue
            self._commitments[node] = bytes(answer.shares.seed_commitment)
        # A device whose secrets fewer than t sharing neighbours hold could never be
        # unmasked: leave it out now, before anyone masks with it (repeat to a fixpoint).
        changed = True
        while changed:
            changed = False
            for node in list(self._sealed):
                holders = [v for v in self._rosters[node] if v in self._sealed]
                if len(holders) < self.plan.threshold:
                    del self._sealed[node]
                    self._drop(node, "shares", f"only {len(holders)} of its neighbours shared keys; t = {self.plan.threshold}")
                    changed = True
        self.outcome.shared = len(self._sealed)
        requests: dict[int, pb.SecAggRequest] = {}
        for node in self._sealed:
            senders = tuple(v for v in self._rosters[node] if v in self._sealed)
            self._masked_with[node] = senders
            bundle = pb.ShareBundle(
                server_round=self.round,
                senders=subsets.encode(senders, self._rosters[node]),
                sealed=b"".join(self._sealed[v][node] for v in senders),
            )
            requests[node] = pb.SecAggRequest(bundle=bundle)
        return self._advance(ServerStage.MASKED, requests, "shared keys")

    def _check_shares(self, node: int, shares: pb.ShareKeys) -> dict[int, bytes]:
        """``{receiver: sealed share pair}``: one :data:`SEALED_BYTES` record per roster member."""
        self._check_round(shares.server_round)
        if len(shares.seed_commitment) != keys.COMMITMENT_BYTES:
            raise SecAggError(f"seed commitment must be {keys.COMMITMENT_BYTES} bytes")
        roster = self._rosters[node]
        records = subsets.split_records(shares.sealed, len(roster), SEALED_BYTES, "malformed sealed shares")
        return dict(zip(roster, records))

    # -- stage 3 ----------------------------------------------------------------------
    def receive_masked(self, answers: Answers) -> dict[int, pb.SecAggRequest]:
        """Masked inputs -> ``{node: unmask request}``; abandons the round below ``t`` survivors."""
        self._require(ServerStage.MASKED)
        for node, answer in self._answers(answers, self._masked_with, "masked"):
            masked = answer.masked
            try:
                self._check_round(masked.server_round)
                self._masked[node] = ring.unpack(masked.data, self.plan.length, self.plan.modulus)
            except SecAggError as exc:
                self._drop(node, "masked", str(exc))
        self.outcome.masked = len(self._masked)
        self.outcome.dropped_before_masking = sorted(set(self._masked_with) - set(self._masked))
        requests: dict[int, pb.SecAggRequest] = {}
        for node in self._masked:
            with_ = self._asked[node] = self._masked_with[node]
            survived = subsets.encode([v for v in with_ if v in self._masked], with_)
            requests[node] = pb.SecAggRequest(unmask=pb.UnmaskRequest(server_round=self.round, survived=survived))
        return self._advance(ServerStage.UNMASK, requests, "sent masked inputs")

    # -- stage 4 ----------------------------------------------------------------------
    def receive_unmask(self, answers: Answers) -> np.ndarray | None:
        """Revealed shares -> the survivors' exact sum (uint64, ``plan.length``), or None if abandoned."""
        self._require(ServerStage.UNMASK)
        seed_shares: dict[int, dict[int, int]] = {v: {} for v in self._masked}
        key_shares: dict[int, dict[int, int]] = {v: {} for v in set(self._masked_with) - set(self._masked)}
        responders: set[int] = set()
        for node, answer in self._answers(answers, self._asked, "revealed"):
            revealed = answer.revealed
            try:
                self._check_round(revealed.server_round)
                owners = subsets.decode(revealed.held, self._asked[node])
                records = subsets.split_records(revealed.shares, len(owners), shamir.SHARE_BYTES, "revealed shares")
            except SecAggError as exc:
                self._drop(node, "unmask", str(exc))
                continue
            responders.add(node)
            x = self.plan.x_of(node)
            for owner, record in zip(owners, records):
                try:
                    share = shamir.from_bytes(record)
                except SecAggError as exc:
                    self._drop(node, "unmask", f"share for node {owner} dropped: {exc}")
                    continue
                (seed_shares if owner in self._masked else key_shares)[owner][x] = share
        self.outcome.revealed = len(responders)
        self.outcome.dropped_after_masking = sorted(set(self._masked) - responders)
        try:
            total = self._unmask(seed_shares, key_shares)
        except SecAggError as exc:
            self.abandoned = f"round {self.round} abandoned: {exc}"
            self.stage = ServerStage.ABANDONED
            return None
        self.total = total
        self.stage = ServerStage.DONE
        return total

    def _unmask(self, seed_shares: dict[int, dict[int, int]], key_shares: dict[int, dict[int, int]]) -> np.ndarray:
        length, modulus, r = self.plan.length, self.plan.modulus, self.round
        total = masks.MaskSum(np.zeros(length, dtype=np.uint64), modulus)
        for vector in self._masked.values():
            total.add(vector)  # values below M: below the rejection limit too
        for v, shares in seed_shares.items():
            seed = self._rebuild(v, shares, _matches_commitment(self._commitments[v], v, r), "self-mask seed")
            total.add(masks.self_mask(seed, r, length, modulus), -1)
        for v, shares in key_shares.items():
            secret = self._rebuild(v, shares, _matches_public_key(bytes(self._keys[v].mask_public_key), r), "mask key")
            private = keys.mask_private_key(secret, r)
            for u in self._masked:
                if v in self._masked_with[u]:  # u added its mask for v; v's side of the pair cancels it
                    pair = masks.pairwise_mask(private, self._keys[u].mask_public_key, r, length, modulus)
                    total.add(pair, masks.pairwise_sign(v, u))
        return total.value()

    def _rebuild(self, owner: int, shares: dict[int, int], valid: Callable[[int], bool], what: str) -> int:
        t = self.plan.threshold
        if len(shares) < t:
            raise SecAggError(f"{len(shares)} valid shares of node {owner}'s {what}; t = {t} are needed")
        points = sorted(shares.items())
        for tries, subset in enumerate(itertools.combinations(points, t)):
            if tries >= MAX_RECONSTRUCTION_TRIES:
                break
            secret = shamir.combine(dict(subset))
            if valid(secret):
                spare = [(x, y) for x, y in points if (x, y) not in subset]
                expected = shamir.evaluate_many(dict(subset), [x for x, _ in spare])
                for (x, y), want in zip(spare, expected):  # shares off the polynomial are wrong: say whose
                    if want != y:
                        self._drop(self.plan.participants[x - 1], "unmask", f"wrong share of node {owner}'s {what}")
                return secret
        raise SecAggError(f"no {t} of the {len(shares)} shares of node {owner}'s {what} rebuild it")

    # -- the result ---------------------------------------------------------------------
    def mean_update(self) -> tuple[np.ndarray, float]:
        """``(weighted mean of the survivors' updates, float64 of vector_length; total weight)``.

        Coordinates the sparse variant did not send are 0. Raises if the round is not done
        or the survivors' weights sum to 0.
        """
        if self.stage is not ServerStage.DONE or self.total is None:
            raise SecAggError(f"round {self.round} has no sum (stage {self.stage.value})")
        quantiser, count = self.plan.quantiser, len(self._masked)
        weight = float(self.total[-1]) / quantiser.levels
        if weight <= 0:
            raise SecAggError("the survivors' weights sum to 0")
        sent = quantiser.dequantise_sum(self.total[:-1], count) / weight
        setup = self.plan.setup
        if not setup.kept:
            return sent, weight
        out = np.zeros(int(setup.vector_length), dtype=np.float64)
        out[kept_coordinates(bytes(setup.coordinate_seed), int(setup.vector_length), int(setup.kept))] = sent
        return out, weight

    @property
    def survivors(self) -> list[int]:
        """Devices whose masked input is in the sum."""
        return sorted(self._masked)

    # -- plumbing -------------------------------------------------------------------------
    def _require(self, stage: ServerStage) -> None:
        if self.stage is not stage:
            raise SecAggError(f"round {self.round} is at stage {self.stage.value}, not {stage.value}")

    def _answers(self, answers: Answers, expected: Mapping[int, object] | tuple[int, ...], kind: str):
        """(node, reply) for each expected node with a reply of ``kind``; drops the rest with reasons."""
        for node in answers:
            if node not in expected:
                self._drop(node, kind, "answered a stage it was not asked for")
        for node in expected:
            answer = answers.get(node, "did not answer")
            if isinstance(answer, str):
                self._drop(node, kind, answer)
            elif answer.WhichOneof("stage") != kind:
                self._drop(node, kind, f"sent a {answer.WhichOneof('stage')} reply, expected {kind}")
            else:
                yield node, answer

    def _check_round(self, server_round: int) -> None:
        if server_round != self.round:
            raise SecAggError(f"reply is for round {server_round}, this is round {self.round}")

    def _drop(self, node: int, stage: str, reason: str) -> None:
        self.dropped.append(DroppedInput(int(node), stage, reason))

    def _advance(
        self, stage: ServerStage, requests: dict[int, pb.SecAggRequest], what: str
    ) -> dict[int, pb.SecAggRequest]:
        if len(requests) < self.plan.threshold:
            self.abandoned = (
                f"round {self.round} abandoned: {len(requests)} devices {what}, fewer than t = {self.plan.threshold}"
            )
            self.stage = ServerStage.ABANDONED
            return {}
        self.stage = stage
        return requests


def _matches_commitment(commitment: bytes, node: int, server_round: int) -> Callable[[int], bool]:
    """Is a rebuilt seed the one ``node`` committed to?"""
    return lambda secret: keys.commitment(secret, node, server_round) == commitment


def _matches_public_key(public: bytes, server_round: int) -> Callable[[int], bool]:
    """Is a rebuilt mask secret the one behind the advertised mask public key?"""
    return lambda secret: keys.public_bytes(keys.mask_private_key(secret, server_round)) == public
