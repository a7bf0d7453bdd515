"""SecAgg+ protocol core: exact sums, privacy of one update, dropouts, bad input, stage order.

Real devices (fedge.client.secagg) and the real server state machine exchange serialised
protos through fedge.simulations.secagg_round; nothing is stubbed.
"""

import numpy as np
import pytest
from scipy import stats

from fedge.client.secagg import SecAggDevice
from fedge.client.secagg_vector import SecAggEncoder
from fedge.protos.secagg.params import float_layout
from fedge.protos.secagg import aead, keys, masks, prg, ring, shamir, subsets
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.params import check_setup, layout_digest, make_setup
from fedge.protos.v1 import secagg_pb2 as pb
from fedge.simulations.secagg_round import run_round
from fedge.strategies.secagg.state import SecAggServerRound, ServerStage


def _round(n, length=64, value_bits=8, server_round=1, **kwargs):
    nodes = list(range(1000, 1000 + n))
    setup = make_setup(server_round, nodes, length - 1, bytes(32), value_bits=value_bits, **kwargs)
    return SecAggServerRound(setup), {u: SecAggDevice(u) for u in nodes}, nodes


def _vectors(server, nodes, seed=0):
    rng = np.random.default_rng(seed)
    high = 1 << server.plan.quantiser.value_bits
    return {u: rng.integers(0, high, server.plan.length).astype(np.uint32) for u in nodes}


def _plain_sum(vectors, nodes):
    return np.sum([vectors[u].astype(np.int64) for u in nodes], axis=0)


# -- exactness ---------------------------------------------------------------------------
@pytest.mark.parametrize("sparse", [False, True])
def test_sum_equals_plaintext_sum_of_the_same_quantised_updates_bit_for_bit(sparse):
    n, shapes = 12, {"w": (20, 30), "b": (30,), "count": ()}
    rng = np.random.default_rng(1)
    deltas = {
        u: {"w": rng.normal(0, 0.05, shapes["w"]).astype(np.float32), "b": rng.normal(0, 0.05, 30).astype(np.float32),
            "count": np.array(3, dtype=np.int64)}
        for u in range(1000, 1000 + n)
    }
    layout = float_layout(deltas[1000])
    length = 20 * 30 + 30
    setup = make_setup(5, list(deltas), length, layout_digest(layout), value_bits=8, clip=0.1,
                       kept=length // 10 if sparse else 0, max_examples=500.0)
    plan = check_setup(setup)
    examples = {u: 100 + 37 * i for i, u in enumerate(deltas)}
    # the plaintext: each device's quantised vector, from an encoder with the same rounding draws
    plain = {u: SecAggEncoder().encode(plan, deltas[u], examples[u], np.random.default_rng(u)) for u in deltas}
    server = SecAggServerRound(setup)
    devices = {u: SecAggDevice(u) for u in deltas}
    rosters = server.receive_keys({u: devices[u].answer(server.setup_request()) for u in deltas})
    bundles = server.receive_shares({u: devices[u].answer(r) for u, r in rosters.items()})
    masked = {u: devices[u].masked_input(b, deltas[u], examples[u], np.random.default_rng(u)) for u, b in bundles.items()}
    requests = server.receive_masked(masked)
    total = server.receive_unmask({u: devices[u].answer(r) for u, r in requests.items()})
    assert total is not None and server.stage is ServerStage.DONE
    expected = _plain_sum(plain, deltas)
    assert expected.max() < setup.modulus  # headroom: the sum never wrapped
    np.testing.assert_array_equal(total.astype(np.int64), expected)
    # and what it means: the example-weighted mean of the clipped updates, to rounding error
    mean, weight = server.mean_update()
    flat = {u: np.concatenate([deltas[u]["w"].ravel(), deltas[u]["b"]]) for u in deltas}
    w = {u: min(255, round(255 * examples[u] / 500.0)) / 255 for u in deltas}
    target = sum(np.clip(w[u] * flat[u], -0.1, 0.1) for u in deltas) / sum(w.values())  # each w*x is clipped
    assert weight == pytest.approx(sum(w.values()))
    if sparse:
        sent = mean != 0
        assert sent.sum() <= length // 10
        target = np.where(sent, target, 0)
    # stochastic rounding moves each device's w*x by less than one step
    assert np.abs(mean - target).max() < n * plan.quantiser.step / weight


def test_sparse_variant_sends_only_the_shared_coordinates_and_error_feedback_keeps_the_rest():
    setup = make_setup(2, [1, 2, 3], 1000, layout_digest([("x", (1000,))]), kept=100, clip=1.0)
    setup.error_feedback = True
    plan = check_setup(setup)
    encoder = SecAggEncoder()
    delta = {"x": np.linspace(-0.5, 0.5, 1000).astype(np.float32)}
    vector = encoder.encode(plan, delta, 10, np.random.default_rng(0))
    assert vector.shape == (101,)
    assert encoder.residual is not None
    from fedge.protos.secagg.coordinates import kept_coordinates

    kept = kept_coordinates(bytes(setup.coordinate_seed), 1000, 100)
    unsent = np.setdiff1d(np.arange(1000), kept)
    np.testing.assert_allclose(encoder.residual[unsent], delta["x"][unsent].astype(np.float64))
    assert np.abs(encoder.residual[kept]).max() <= plan.quantiser.step + 1e-9  # only rounding error left


# -- privacy of one update -----------------------------------------------------------------
def test_what_the_server_receives_from_one_device_is_uniform_whatever_its_input():
    """Masked inputs of a device holding all-zero and all-max vectors, over many rounds:
    both are uniform modulo M (chi-square), and indistinguishable from each other."""
    seen = {0: [], 15: []}
    for r in range(1, 41):
        for value in seen:
            server, devices, nodes = _round(3, length=2048, value_bits=4, server_round=r)
            vectors = {u: np.full(server.plan.length, value, dtype=np.uint32) for u in nodes}
            captured = {}

            def capture(stage, node, reply, captured=captured):
                if stage == "masked" and node == nodes[0]:
                    captured["data"] = reply.masked
                return reply

            assert run_round(server, devices, vectors, tamper=capture) is not None
            masked = captured["data"]
            seen[value].append(ring.unpack(masked.data, server.plan.length, server.plan.modulus))
    bins = server.plan.modulus  # 3 devices of 4-bit values: M = 3 * 15 + 1 = 46 values
    counts = {v: np.bincount(np.concatenate(s), minlength=bins) for v, s in seen.items()}
    for value, observed in counts.items():
        assert stats.chisquare(observed).pvalue > 1e-3, f"input {value}: masked values are not uniform"
    table = np.vstack([counts[0], counts[15]])
    assert stats.chi2_contingency(table).pvalue > 1e-3  # same distribution for both inputs


def test_fewer_than_t_shares_do_not_rebuild_a_secret():
    for t in (2, 3, 5):
        secret = shamir.random_secret()
        shares = shamir.split(secret, list(range(1, 8)), t)
        assert shamir.combine({x: shares[x] for x in range(1, t + 1)}) == secret
        assert shamir.combine({x: shares[x] for x in range(3, t + 3)}) == secret
        assert shamir.combine({x: shares[x] for x in range(1, t)}) != secret


def test_evaluate_many_gives_every_other_share_of_the_polynomial():
    secret = shamir.random_secret()
    shares = shamir.split(secret, list(range(1, 41)), 15)
    subset = {x: shares[x] for x in range(3, 18)}
    rest = [x for x in shares if x not in subset]
    assert shamir.evaluate_many(subset, rest) == [shares[x] for x in rest] == [shamir.evaluate_at(subset, x) for x in rest]
    with pytest.raises(SecAggError):
        shamir.evaluate_many(subset, [3])


def test_server_cannot_unmask_a_device_with_t_minus_one_shares():
    server, devices, nodes = _round(10)  # complete graph: k = 9, t = 5
    t = server.plan.threshold
    vectors = _vectors(server, nodes)
    revealed: dict[int, dict[int, int]] = {}

    def capture(stage, node, reply):
        if stage == "revealed":  # complete graph, everyone shared: the shares follow the neighbour list
            owners = subsets.decode(reply.revealed.held, server.plan.neighbours[node])
            for i, owner in enumerate(owners):
                share = reply.revealed.shares[16 * i : 16 * (i + 1)]
                revealed.setdefault(owner, {})[server.plan.x_of(node)] = shamir.from_bytes(share)
        if stage == "masked":
            captured[node] = ring.unpack(reply.masked.data, server.plan.length, server.plan.modulus)
        if stage == "shares":
            commitments[node] = reply.shares.seed_commitment
        return reply

    captured: dict[int, np.ndarray] = {}
    commitments: dict[int, bytes] = {}
    # t devices mask, one of them (the victim) vanishes before unmasking: the other t - 1
    # reveal their shares of its seed, which is all the server can get
    total = run_round(server, devices, vectors, drop_before_masking=nodes[t:], drop_after_masking=nodes[:1], tamper=capture)
    assert total is None and server.stage is ServerStage.ABANDONED
    assert f"t = {t} are needed" in server.abandoned
    victim = nodes[0]
    assert len(revealed[victim]) == t - 1
    guess = shamir.combine(revealed[victim])
    assert keys.commitment(guess, victim, 1) != commitments[victim]
    # the guessed self-mask does not strip the victim's masks: what is left is not its input
    m = server.plan.modulus
    left = masks.MaskSum(captured[victim], m)
    left.add(masks.self_mask(guess, 1, server.plan.length, m), -1)
    left = left.value()
    assert not np.array_equal(left, vectors[victim])


# -- dropouts -------------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before", "after", "both"])
@pytest.mark.parametrize("graph", ["complete", "sparse"])
def test_thirty_percent_dropouts_give_the_exact_sum_of_the_survivors(when, graph):
    n = 20 if graph == "complete" else 60
    server, devices, nodes = _round(n, length=200, neighbours=n - 1 if graph == "complete" else 40)
    if graph == "sparse":  # a fixed graph, so the test is the same every run
        server.plan.setup.graph_seed = b"\x07" * 32
        server = SecAggServerRound(server.plan.setup)
    k, t = server.plan.setup.neighbours, server.plan.threshold
    assert (k == n - 1) == (graph == "complete")
    vectors = _vectors(server, nodes, seed=3)
    gone = sorted(np.random.default_rng(5).choice(nodes, size=3 * n // 10, replace=False).tolist())
    before = gone if when in ("before", "both") else []
    after = gone if when == "after" else (gone[: len(gone) // 2] if when == "both" else [])
    before = [u for u in before if u not in after]
    # within what the graph tolerates: every device keeps >= t neighbours that answer to the end
    assert all(sum(v not in gone for v in server.plan.neighbours[u]) >= t for u in nodes)
    total = run_round(server, devices, vectors, drop_before_masking=before, drop_after_masking=after)
    assert total is not None, server.abandoned
    in_sum = [u for u in nodes if u not in before]  # vanished after masking: their input counts
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, in_sum))
    assert server.outcome.dropped_before_masking == sorted(before)
    assert server.outcome.dropped_after_masking == sorted(after)


def test_fewer_than_t_survivors_abandon_the_round_with_the_reason():
    server, devices, nodes = _round(10)
    total = run_round(server, devices, _vectors(server, nodes), drop_before_masking=nodes[:6])
    assert total is None and server.stage is ServerStage.ABANDONED
    assert "4 devices sent masked inputs, fewer than t = 5" in server.abandoned


# -- bad input ------------------------------------------------------------------------------
def _tampered(tamper, n=10, **kwargs):
    server, devices, nodes = _round(n)
    vectors = _vectors(server, nodes)
    total = run_round(server, devices, vectors, tamper=tamper, **kwargs)
    return server, nodes, vectors, total


def _outside_the_field(shares: bytes) -> bytes:  # one share dropped, the rest used
    return b"\xff" * 16 + shares[16:]


def _cut_short(shares: bytes) -> bytes:  # the device's whole reveal dropped
    return shares[:-1]


def _wrong_valued(shares: bytes) -> bytes:  # well formed: only the commitment shows it is wrong
    return shamir.to_bytes((shamir.from_bytes(shares[:16]) + 1) % shamir.PRIME) + shares[16:]


@pytest.mark.parametrize(
    ("corrupt", "sender", "reason"),
    [(_outside_the_field, 1003, "not a field element"), (_cut_short, 1005, "revealed shares"), (_wrong_valued, 1004, "wrong share")],
    ids=["outside-the-field", "cut-short", "wrong-valued"],
)
def test_a_bad_revealed_share_is_left_out_with_its_reason_and_the_sum_stays_exact(corrupt, sender, reason):
    def tamper(stage, node, reply):
        if stage == "revealed" and node == sender:
            reply.revealed.shares = corrupt(reply.revealed.shares)
        return reply

    server, nodes, vectors, total = _tampered(tamper)
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, nodes))
    assert any(d.node_id == sender and reason in d.reason for d in server.dropped)


def test_a_malformed_encrypted_share_drops_its_sender_before_anyone_masks_with_it():
    def tamper(stage, node, reply):
        if stage == "shares" and node == 1007:
            reply.shares.sealed = reply.shares.sealed[:-5]
        return reply

    server, nodes, vectors, total = _tampered(tamper)
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, [u for u in nodes if u != 1007]))
    assert any(d.node_id == 1007 and d.stage == "shares" and "malformed sealed shares" in d.reason for d in server.dropped)
    assert 1007 not in server.survivors


def test_a_wrong_length_masked_vector_is_dropped_and_its_masks_removed():
    def tamper(stage, node, reply):
        if stage == "masked" and node == 1002:
            reply.masked.data = reply.masked.data[:-2]
        return reply

    server, nodes, vectors, total = _tampered(tamper)
    # 1002 counts as dropped before its input: the survivors' masks for it come off
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, [u for u in nodes if u != 1002]))
    assert any(d.node_id == 1002 and d.stage == "masked" and "bytes" in d.reason for d in server.dropped)


def test_shares_for_another_round_are_dropped_with_a_reason():
    old_server, old_devices, nodes = _round(10, server_round=1)
    old = {}

    def keep(stage, node, reply):
        if stage == "shares":
            old[node] = pb.ShareKeys.FromString(reply.shares.SerializeToString())
        return reply

    run_round(old_server, old_devices, _vectors(old_server, nodes), tamper=keep)

    # round 2: node 1001 re-sends its round-1 message; node 1005 slips one round-1
    # ciphertext into a well-formed round-2 message (only its receiver can tell)
    def replay(stage, node, reply):
        if stage == "shares" and node == 1001:
            reply.shares.CopyFrom(old[1001])
        if stage == "shares" and node == 1005:  # complete graph: 1006 is 1005's 6th neighbour in both rounds
            i, size = server.plan.neighbours[1005].index(1006), aead.SEALED_BYTES
            sealed = reply.shares.sealed
            reply.shares.sealed = sealed[: i * size] + old[1005].sealed[i * size : (i + 1) * size] + sealed[(i + 1) * size :]
        return reply

    server, devices, _ = _round(10, server_round=2)
    vectors = _vectors(server, nodes)
    total = run_round(server, devices, vectors, tamper=replay)
    assert any(d.node_id == 1001 and "round 1" in d.reason for d in server.dropped)
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, [u for u in nodes if u != 1001]))


# -- stage order and setup checks ------------------------------------------------------------
def test_stages_must_come_in_order_on_both_sides():
    server, devices, nodes = _round(4)
    with pytest.raises(SecAggError, match="not shares"):
        server.receive_shares({})
    with pytest.raises(SecAggError, match="out of order"):
        devices[nodes[0]].answer(pb.SecAggRequest(roster=pb.KeyRoster(server_round=1)))
    request = server.setup_request()
    devices[nodes[0]].answer(request)
    with pytest.raises(SecAggError, match="round 7"):
        devices[nodes[0]].answer(pb.SecAggRequest(roster=pb.KeyRoster(server_round=7)))


def test_setups_that_break_the_guarantees_are_refused():
    setup = make_setup(1, [1, 2, 3, 4, 5], 10, bytes(32))
    for field, value, match in [
        ("threshold", 2, "more than half"),
        ("modulus", 5 * 255 + 2, "modulus"),
        ("graph_seed", b"short", "graph_seed"),
    ]:
        bad = pb.SecAggSetup()
        bad.CopyFrom(setup)
        setattr(bad, field, value)
        with pytest.raises(SecAggError, match=match):
            check_setup(bad)
    with pytest.raises(SecAggError, match=r"need a modulus of 33554430001 > 2\*\*32"):
        make_setup(1, list(range(2000)), 10, bytes(32), value_bits=24)


def test_neighbour_graph_is_k_regular_symmetric_and_seeded():
    from fedge.protos.secagg.graph import neighbour_count, neighbours

    nodes = list(range(500))
    k = neighbour_count(500, dropout=0.1)
    assert k < 40
    graph = neighbours(nodes, k, b"s" * 32)
    assert all(len(peers) == k and u not in peers for u, peers in graph.items())
    assert all(u in graph[v] for u, peers in graph.items() for v in peers)
    assert graph == neighbours(nodes, k, b"s" * 32) != neighbours(nodes, k, b"t" * 32)


@pytest.mark.parametrize("n", [10, 60, 300, 1000])
def test_the_default_graph_survives_thirty_percent_dropouts(n):
    """Default k and t: 30% of devices gone (200 random draws) never leave a device with
    fewer than t answering neighbours, and k grows like log n, not n."""
    from fedge.protos.secagg.graph import neighbour_count

    nodes = list(range(1000, 1000 + n))
    server, _, _ = _round(n, length=8)
    k, t = server.plan.setup.neighbours, server.plan.threshold
    assert k == neighbour_count(n) and t == k // 2 + 1
    peers = np.array([[nodes.index(v) for v in server.plan.neighbours[u]] for u in nodes])  # (n, k)
    rng = np.random.default_rng(n)
    worst = min(
        int((~np.isin(peers, rng.choice(n, size=3 * n // 10, replace=False))).sum(axis=1).min()) for _ in range(200)
    )
    assert worst >= t, f"k={k}, t={t}: a device kept only {worst} neighbours"
    if n >= 300:
        assert k < n / 2
    assert neighbour_count(10_000) < 1.3 * neighbour_count(1000)  # logarithmic growth


def test_ring_packing_round_trips_every_modulus_and_refuses_what_is_not_a_packing():
    rng = np.random.default_rng(0)
    for modulus in (2, 3, 255, 256, 257, 2551, 25_501, 255_001, (1 << 31) + 1, (1 << 32) - 1, 1 << 32):
        for count in (1, 13, 77):
            values = rng.integers(0, modulus, count, dtype=np.uint64)
            data = ring.pack(values, modulus)
            assert len(data) == ring.packed_size(count, modulus)
            np.testing.assert_array_equal(ring.unpack(data, count, modulus), values)
    # n = 100 8-bit devices: M = 25,501, 14 values in 205 bits (14.64 bits a value, not 15)
    assert ring.group_shape(25_501) == (14, 205)
    assert ring.packed_size(38_284, 25_501) == (2735 * 205 + 7) // 8
    with pytest.raises(SecAggError, match="bytes"):
        ring.unpack(b"\0" * 10, 13, 25_501)
    too_big = bytes([0xFF]) * ring.packed_size(14, 25_501)  # one group of all ones: >= M**14
    with pytest.raises(SecAggError, match="at or above"):
        ring.unpack(too_big, 14, 25_501)
    padded = ring.pack(np.arange(14, dtype=np.uint64), 25_501)  # 13 values + 1 padding value that is not 0
    with pytest.raises(SecAggError, match="padding"):
        ring.unpack(padded, 13, 25_501)
    with pytest.raises(SecAggError, match="below the modulus"):
        ring.pack(np.array([25_501], dtype=np.uint64), 25_501)


def test_masks_are_exactly_uniform_modulo_m_and_the_same_from_the_same_seed():
    modulus = 3 * 15 + 1
    values = prg.mask(b"k" * 32, 200_000, modulus)
    assert values.max() < modulus
    np.testing.assert_array_equal(values, prg.mask(b"k" * 32, 200_000, modulus))
    np.testing.assert_array_equal(values[:1000], prg.mask(b"k" * 32, 1000, modulus))  # a prefix of the same stream
    assert stats.chisquare(np.bincount(values.astype(np.int64), minlength=modulus)).pvalue > 1e-3
    # rejection sampling: the words a plain "mod M" would bias (the top of the uint32 range) are skipped
    words = prg.words(b"k" * 32, 1000)
    kept = words[words < (2**32 // modulus) * modulus]
    np.testing.assert_array_equal(prg.mask(b"k" * 32, len(kept), modulus), kept % modulus)


def test_a_mask_sum_reduced_once_equals_reducing_every_step():
    rng = np.random.default_rng(2)
    for modulus in (46, 25_501, (1 << 32) - 5, 1 << 32):
        start = rng.integers(0, modulus, 500, dtype=np.uint64)
        total, expected = masks.MaskSum(start, modulus), start.astype(object)
        for i, sign in enumerate([1, -1, -1, 1, -1]):
            words = prg.mask_words(bytes([i]) * 32, 500, modulus)
            total.add(words, sign)
            expected = (expected + sign * words.astype(object)) % modulus
        np.testing.assert_array_equal(total.value(), expected.astype(np.uint64))


def test_subset_bitmaps_name_members_in_list_order_and_refuse_stray_bits():
    among = (3, 7, 9, 12, 20, 21, 22, 30, 31)
    data = subsets.encode([7, 30, 31], among)
    assert len(data) == 2 and subsets.decode(data, among) == (7, 30, 31)
    with pytest.raises(SecAggError, match="past its list"):
        subsets.decode(bytes([0, 0xFF]), among)
    with pytest.raises(SecAggError, match="bytes"):
        subsets.decode(b"\0", among)
    with pytest.raises(SecAggError, match="outside"):
        subsets.encode([8], among)


def test_both_directions_under_one_pair_key_use_different_nonces():
    """u -> v and v -> u share a key (one X25519 agreement); the derived nonces differ,
    so no (key, nonce) pair seals two messages; a sealed pair opens only as sent."""
    key, pair = b"K" * 32, b"P" * aead.PAIR_BYTES
    to_v = aead.seal(key, 1, pair, aead.associated_data(4, 1, 2))
    to_u = aead.seal(key, 2, pair, aead.associated_data(4, 2, 1))
    assert len(to_v) == aead.SEALED_BYTES == 48 and to_v != to_u and aead.nonce(1) != aead.nonce(2)
    assert aead.open_sealed(key, 1, to_v, aead.associated_data(4, 1, 2)) == pair
    for sender, associated in [(2, aead.associated_data(4, 1, 2)), (1, aead.associated_data(5, 1, 2)), (1, aead.associated_data(4, 1, 3))]:
        with pytest.raises(SecAggError, match="authenticate"):
            aead.open_sealed(key, sender, to_v, associated)


def test_a_device_sends_its_masked_vector_plus_64_bytes_a_neighbour_plus_a_fixed_few():
    """The uplink budget, exactly: per neighbour a 48-byte sealed share pair and a 16-byte
    revealed share; per device two public keys, a 16-byte commitment and message framing."""
    from fedge.simulations.secagg_round import ProtocolCost

    for n, neighbours in [(10, 0), (40, 12)]:
        server, devices, nodes = _round(n, length=1000, neighbours=neighbours)
        cost = ProtocolCost()
        assert run_round(server, devices, _vectors(server, nodes), cost=cost) is not None
        k, plan = server.plan.setup.neighbours, server.plan
        masked = ring.packed_size(plan.length, plan.modulus)
        for u in nodes:
            fixed = cost.uplink_bytes[u] - masked - 64 * k - (k + 7) // 8  # the bitmap of held shares
            # 4 replies, each with its round, node id, stage tag and field lengths: <= 16 bytes of framing
            assert 2 * 32 + 16 <= fixed <= 2 * 32 + 16 + 4 * 16, f"n={n}: {fixed} bytes beyond keys, shares and masked vector"
