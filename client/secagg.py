"""The device's side of secure aggregation (SecAgg+), stage by stage (flwr-free).

A round is a small state machine; each stage checks it follows the one before, in the
same round, and refuses (:class:`~fedge.protos.secagg.SecAggError`) anything else:

1. ``setup`` -> :meth:`SecAggDevice.answer` -> ``keys``: check the round's parameters,
   make a cipher key pair and a mask secret (its X25519 key derived by HKDF);
2. ``roster`` -> ``shares``: the public keys of the neighbours that advertised (a
   bitmap over its neighbours, which the setup fixes); Shamir-share (t-of-k) a fresh
   self-mask seed and the mask secret among them, each pair of shares sealed for its
   neighbour (ChaCha20-Poly1305 under an X25519-agreed key, 48 bytes), plus a
   commitment to the seed;
3. ``bundle`` + the trained delta -> :meth:`SecAggDevice.masked_input` -> ``masked``:
   keep the shares sent to this device, quantise the delta
   (:mod:`fedge.client.secagg_vector`), add the self-mask and one pairwise mask per
   neighbour in the bundle, send modulo ``M`` (:mod:`fedge.protos.secagg.ring`);
4. ``unmask`` -> ``revealed``: for each neighbour it masked with, its seed share if the
   request marks it survived, else its mask-key share: never both for one neighbour
   (one bit per neighbour decides which), and only for neighbours it masked with.

The device's secrets and shares live only for one round.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedge.client.secagg_vector import SecAggEncoder
from fedge.protos.secagg import aead, keys, masks, ring, shamir, subsets
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.params import RoundPlan, check_setup
from fedge.protos.v1 import secagg_pb2 as pb

log = logging.getLogger(__name__)


class DeviceStage(enum.Enum):
    """The last stage a device answered in the current round."""

    KEYS = "keys"
    SHARES = "shares"
    MASKED = "masked"


@dataclass
class _Round:
    plan: RoundPlan
    cipher_key: X25519PrivateKey
    mask_secret: int
    mask_key: X25519PrivateKey
    stage: DeviceStage = DeviceStage.KEYS
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # roster: node -> (cipher, mask) public keys
    seed_secret: int = 0
    held: dict[int, tuple[int, int]] = field(default_factory=dict)  # sender -> (seed share, key share)
    masked_with: tuple[int, ...] = ()
    rejected: dict[int, str] = field(default_factory=dict)  # sender -> why its share was not kept


class SecAggDevice:
    """One device's secure-aggregation state (one round at a time) and encoder."""

    def __init__(self, node_id: int) -> None:
        self.node_id = int(node_id)
        self.encoder = SecAggEncoder()
        self._round: _Round | None = None

    # -- stages 1, 2, 4 -------------------------------------------------------------
    def answer(self, request: pb.SecAggRequest) -> pb.SecAggReply:
        """The reply to a setup, roster or unmask request."""
        stage = request.WhichOneof("stage")
        if stage == "setup":
            return self._advertise(request.setup)
        if stage == "roster":
            return self._share(request.roster)
        if stage == "unmask":
            return self._reveal(request.unmask)
        if stage == "bundle":
            raise SecAggError("a share bundle comes with the round's train task, not alone")
        raise SecAggError("empty secure-aggregation request")

    def _advertise(self, setup: pb.SecAggSetup) -> pb.SecAggReply:
        plan = check_setup(setup)
        if self.node_id not in plan.participants:
            raise SecAggError(f"node {self.node_id} is not a participant of round {plan.server_round}")
        secret = shamir.random_secret()
        state = _Round(plan, keys.new_private_key(), secret, keys.mask_private_key(secret, plan.server_round))
        self._round = state
        return pb.SecAggReply(
            keys=pb.AdvertiseKeys(
                server_round=plan.server_round,
                cipher_public_key=keys.public_bytes(state.cipher_key),
                mask_public_key=keys.public_bytes(state.mask_key),
            )
        )

    def _share(self, roster: pb.KeyRoster) -> pb.SecAggReply:
        state = self._expect(DeviceStage.KEYS, roster.server_round)
        plan = state.plan
        members = subsets.decode(roster.advertised, plan.neighbours[self.node_id])
        if len(members) < plan.threshold:
            raise SecAggError(f"only {len(members)} neighbours advertised keys; the threshold is {plan.threshold}")
        records = subsets.split_records(roster.public_keys, len(members), 2 * keys.PUBLIC_KEY_BYTES, "roster keys")
        peers: dict[int, tuple[bytes, bytes]] = {}
        for v, record in zip(members, records):
            cipher, mask = record[: keys.PUBLIC_KEY_BYTES], record[keys.PUBLIC_KEY_BYTES :]
            keys.parse_public_key(cipher)
            keys.parse_public_key(mask)
            peers[v] = (cipher, mask)
        state.peers = peers
        state.seed_secret = shamir.random_secret()
        xs = [plan.x_of(v) for v in members]
        seed_shares = shamir.split(state.seed_secret, xs, plan.threshold)
        key_shares = shamir.split(state.mask_secret, xs, plan.threshold)
        sealed = []
        for v, x in zip(members, xs):
            key = keys.agree(state.cipher_key, peers[v][0], "share-cipher", plan.server_round)
            pair = shamir.to_bytes(seed_shares[x]) + shamir.to_bytes(key_shares[x])
            sealed.append(aead.seal(key, self.node_id, pair, aead.associated_data(plan.server_round, self.node_id, v)))
        state.stage = DeviceStage.SHARES
        return pb.SecAggReply(
            shares=pb.ShareKeys(
                server_round=plan.server_round,
                seed_commitment=keys.commitment(state.seed_secret, self.node_id, plan.server_round),
                sealed=b"".join(sealed),
            )
        )

    # -- stage 3 ----------------------------------------------------------------------
    def masked_input(
        self,
        request: pb.SecAggRequest,
        delta: Mapping[str, np.ndarray],
        num_examples: int,
        rng: np.random.Generator,
    ) -> pb.SecAggReply:
        """The masked, quantised ``delta`` (``local - global`` by tensor name).

        ``rng`` drives the stochastic rounding (a simulation seeds it per node and round).
        """
        plan = self._expect(DeviceStage.SHARES, _bundle_of(request).server_round).plan
        return self.mask_vector(request, self.encoder.encode(plan, delta, num_examples, rng))

    def mask_vector(self, request: pb.SecAggRequest, vector: np.ndarray) -> pb.SecAggReply:
        """Keep the bundle's shares; ``vector`` (integers below ``2**value_bits``) masked."""
        bundle = _bundle_of(request)
        state = self._expect(DeviceStage.SHARES, bundle.server_round)
        plan = state.plan
        length, modulus = plan.length, plan.modulus
        vector = np.asarray(vector, dtype=np.uint64)
        if vector.shape != (length,) or (vector.size and int(vector.max()) >= 1 << plan.quantiser.value_bits):
            raise SecAggError(f"the vector to mask must be {length} integers below 2**{plan.quantiser.value_bits}")
        senders = subsets.decode(bundle.senders, tuple(state.peers))
        for sender, sealed in zip(senders, subsets.split_records(bundle.sealed, len(senders), aead.SEALED_BYTES, "bundle")):
            try:
                state.held[sender] = self._open(state, sender, sealed)
            except SecAggError as exc:  # it still masks with the sender: the sender masks with it
                state.rejected[sender] = str(exc)
                log.warning("node %d: share from %d not kept: %s", self.node_id, sender, exc)
        masked = masks.MaskSum(vector, modulus)
        masked.add(masks.self_mask(state.seed_secret, plan.server_round, length, modulus))
        for v in senders:
            pair = masks.pairwise_mask(state.mask_key, state.peers[v][1], plan.server_round, length, modulus)
            masked.add(pair, masks.pairwise_sign(self.node_id, v))
        state.masked_with = senders
        state.stage = DeviceStage.MASKED
        return pb.SecAggReply(
            masked=pb.MaskedInput(server_round=plan.server_round, data=ring.pack(masked.value(), modulus))
        )

    def _open(self, state: _Round, sender: int, sealed: bytes) -> tuple[int, int]:
        plan = state.plan
        key = keys.agree(state.cipher_key, state.peers[sender][0], "share-cipher", plan.server_round)
        pair = aead.open_sealed(key, sender, sealed, aead.associated_data(plan.server_round, sender, self.node_id))
        return shamir.from_bytes(pair[: shamir.SHARE_BYTES]), shamir.from_bytes(pair[shamir.SHARE_BYTES :])

    # -- stage 4 ----------------------------------------------------------------------
    def _reveal(self, request: pb.UnmaskRequest) -> pb.SecAggReply:
        state = self._expect(DeviceStage.MASKED, request.server_round)
        survived = set(subsets.decode(request.survived, state.masked_with))
        held = [v for v in state.masked_with if v in state.held]
        shares = [shamir.to_bytes(state.held[v][0 if v in survived else 1]) for v in held]
        self._round = None  # a round's secrets are used once
        return pb.SecAggReply(
            revealed=pb.UnmaskShares(
                server_round=state.plan.server_round,
                held=subsets.encode(held, state.masked_with),
                shares=b"".join(shares),
            )
        )

    def _expect(self, stage: DeviceStage, server_round: int) -> _Round:
        state = self._round
        if state is None or state.stage is not stage:
            have = "no round" if state is None else f"stage {state.stage.value}"
            raise SecAggError(f"out of order: this request follows stage {stage.value}, the device is at {have}")
        if server_round != state.plan.server_round:
            raise SecAggError(f"request is for round {server_round}, the device is in round {state.plan.server_round}")
        return state


def _bundle_of(request: pb.SecAggRequest) -> pb.ShareBundle:
    if request.WhichOneof("stage") != "bundle":
        raise SecAggError("the train task of a secure-aggregation round must carry the share bundle")
    return request.bundle
