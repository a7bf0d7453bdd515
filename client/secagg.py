"""The device's side of secure aggregation (SecAgg+), stage by stage (flwr-free).

A round is a small state machine; each stage checks it follows the one before, in the
same round, and refuses (:class:`~fedge.protos.secagg.SecAggError`) anything else:

1. ``setup`` -> :meth:`SecAggDevice.answer` -> ``keys``: check the round's parameters,
   make a cipher key pair and a mask secret (its X25519 key derived by HKDF);
2. ``roster`` -> ``shares``: the neighbours' public keys; Shamir-share (t-of-k) a fresh
   self-mask seed and the mask secret among them, each pair of shares encrypted for its
   neighbour (ChaCha20-Poly1305 under an X25519-agreed key), plus a commitment to the seed;
3. ``bundle`` + the trained delta -> :meth:`SecAggDevice.masked_input` -> ``masked``:
   keep the shares sent to this device, quantise the delta
   (:mod:`fedge.client.secagg_vector`), add the self-mask and one pairwise mask per
   neighbour in the bundle, send modulo ``2**m``;
4. ``unmask`` -> ``revealed``: for each neighbour that survived, its seed share; for each
   that dropped, its mask-key share; never both for one neighbour (the lists must be
   disjoint), and only for neighbours it masked with.

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
from fedge.protos.secagg import aead, keys, masks, ring, shamir
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
    peers: dict[int, pb.PeerKeys] = field(default_factory=dict)
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
                node_id=self.node_id,
                cipher_public_key=keys.public_bytes(state.cipher_key),
                mask_public_key=keys.public_bytes(state.mask_key),
            )
        )

    def _share(self, roster: pb.KeyRoster) -> pb.SecAggReply:
        state = self._expect(DeviceStage.KEYS, roster.server_round)
        plan = state.plan
        mine = set(plan.neighbours[self.node_id])
        peers: dict[int, pb.PeerKeys] = {}
        for peer in roster.peers:
            if peer.node_id not in mine or peer.node_id in peers:
                raise SecAggError(f"roster lists node {peer.node_id}, not a (single) neighbour of {self.node_id}")
            keys.parse_public_key(peer.cipher_public_key)
            keys.parse_public_key(peer.mask_public_key)
            peers[peer.node_id] = peer
        if len(peers) < plan.threshold:
            raise SecAggError(f"only {len(peers)} neighbours advertised keys; the threshold is {plan.threshold}")
        state.peers = peers
        state.seed_secret = shamir.random_secret()
        xs = [plan.x_of(v) for v in peers]
        seed_shares = shamir.split(state.seed_secret, xs, plan.threshold)
        key_shares = shamir.split(state.mask_secret, xs, plan.threshold)
        reply = pb.ShareKeys(
            server_round=plan.server_round,
            node_id=self.node_id,
            seed_commitment=keys.commitment(state.seed_secret, self.node_id, plan.server_round),
        )
        for v, peer in peers.items():
            x = plan.x_of(v)
            plaintext = pb.SharePlaintext(
                server_round=plan.server_round,
                sender=self.node_id,
                receiver=v,
                seed_share=shamir.to_bytes(seed_shares[x]),
                key_share=shamir.to_bytes(key_shares[x]),
            ).SerializeToString()
            key = keys.agree(state.cipher_key, peer.cipher_public_key, "share-cipher", plan.server_round)
            nonce, ciphertext = aead.seal(key, plaintext, aead.associated_data(plan.server_round, self.node_id, v))
            reply.shares.add(sender=self.node_id, receiver=v, nonce=nonce, ciphertext=ciphertext)
        state.stage = DeviceStage.SHARES
        return pb.SecAggReply(shares=reply)

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
        length, bits = plan.length, plan.modulus_bits
        vector = np.asarray(vector, dtype=np.uint32)
        if vector.shape != (length,) or (vector.size and int(vector.max()) >= 1 << plan.quantiser.value_bits):
            raise SecAggError(f"the vector to mask must be {length} integers below 2**{plan.quantiser.value_bits}")
        senders: list[int] = []
        for share in bundle.shares:
            sender = int(share.sender)
            if sender not in state.peers or sender in senders or share.receiver != self.node_id:
                raise SecAggError(f"bundle holds a share from {sender} to {share.receiver} this device cannot take")
            senders.append(sender)
            try:
                state.held[sender] = self._open(state, share)
            except SecAggError as exc:  # it still masks with the sender: the sender masks with it
                state.rejected[sender] = str(exc)
                log.warning("node %d: share from %d not kept: %s", self.node_id, sender, exc)
        masked = ring.add(vector, masks.self_mask(state.seed_secret, plan.server_round, length, bits), bits)
        for v in senders:
            pair = masks.pairwise_mask(
                state.mask_key, self.node_id, state.peers[v].mask_public_key, v, plan.server_round, length, bits
            )
            masked = ring.add(masked, pair, bits)
        state.masked_with = tuple(senders)
        state.stage = DeviceStage.MASKED
        return pb.SecAggReply(
            masked=pb.MaskedInput(
                server_round=plan.server_round,
                node_id=self.node_id,
                length=length,
                modulus_bits=bits,
                data=ring.pack(masked, bits),
            )
        )

    def _open(self, state: _Round, share: pb.EncryptedShare) -> tuple[int, int]:
        plan, sender = state.plan, int(share.sender)
        key = keys.agree(state.cipher_key, state.peers[sender].cipher_public_key, "share-cipher", plan.server_round)
        data = aead.open_sealed(
            key, share.nonce, share.ciphertext, aead.associated_data(plan.server_round, sender, self.node_id)
        )
        plaintext = pb.SharePlaintext()
        try:
            plaintext.ParseFromString(data)
        except Exception as exc:  # protobuf's DecodeError
            raise SecAggError(f"share plaintext does not parse: {exc}") from None
        if (plaintext.server_round, plaintext.sender, plaintext.receiver) != (plan.server_round, sender, self.node_id):
            raise SecAggError("share plaintext names another round, sender or receiver")
        return shamir.from_bytes(plaintext.seed_share), shamir.from_bytes(plaintext.key_share)

    # -- stage 4 ----------------------------------------------------------------------
    def _reveal(self, request: pb.UnmaskRequest) -> pb.SecAggReply:
        state = self._expect(DeviceStage.MASKED, request.server_round)
        survivors, dropped = [int(v) for v in request.survivors], [int(v) for v in request.dropped]
        asked = survivors + dropped
        if len(set(asked)) != len(asked):
            raise SecAggError("unmask request lists a node twice (or as both survivor and dropped)")
        strangers = set(asked) - set(state.masked_with)
        if strangers:
            raise SecAggError(f"unmask request names nodes {sorted(strangers)} this device did not mask with")
        reply = pb.UnmaskShares(server_round=state.plan.server_round, node_id=self.node_id)
        for v in survivors:
            if v in state.held:
                reply.shares.add(owner=v, kind=pb.SHARE_KIND_SEED, share=shamir.to_bytes(state.held[v][0]))
        for v in dropped:
            if v in state.held:
                reply.shares.add(owner=v, kind=pb.SHARE_KIND_KEY, share=shamir.to_bytes(state.held[v][1]))
        self._round = None  # a round's secrets are used once
        return pb.SecAggReply(revealed=reply)

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
