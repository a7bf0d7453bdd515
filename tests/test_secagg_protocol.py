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
from fedge.protos.secagg import keys, masks, ring, shamir
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
    assert expected.max() < 1 << setup.modulus_bits  # headroom: the sum never wrapped
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
    both are uniform modulo 2**m (chi-square), and indistinguishable from each other."""
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
            seen[value].append(ring.unpack(masked.data, masked.length, masked.modulus_bits))
    bins = 1 << server.plan.modulus_bits  # 4 value bits + 2 headroom bits: 64 values
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
        if stage == "revealed":
            for share in reply.revealed.shares:
                revealed.setdefault(share.owner, {})[server.plan.x_of(node)] = shamir.from_bytes(share.share)
        if stage == "masked":
            captured[node] = ring.unpack(reply.masked.data, reply.masked.length, reply.masked.modulus_bits)
        return reply

    captured: dict[int, np.ndarray] = {}
    # t devices mask, one of them (the victim) vanishes before unmasking: the other t - 1
    # reveal their shares of its seed, which is all the server can get
    total = run_round(server, devices, vectors, drop_before_masking=nodes[t:], drop_after_masking=nodes[:1], tamper=capture)
    assert total is None and server.stage is ServerStage.ABANDONED
    assert f"t = {t} are needed" in server.abandoned
    victim = nodes[0]
    assert len(revealed[victim]) == t - 1
    guess = shamir.combine(revealed[victim])
    commitment = bytes(server._shares[victim].seed_commitment)
    assert keys.commitment(guess, victim, 1) != commitment
    # the guessed self-mask does not strip the victim's masks: what is left is not its input
    left = ring.subtract(captured[victim], masks.self_mask(guess, 1, server.plan.length, server.plan.modulus_bits), server.plan.modulus_bits)
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


def _malformed(share):
    share.share = b"\x01" * 15


def _wrong_valued(share):  # well formed: only the commitment shows it is wrong
    share.share = shamir.to_bytes((shamir.from_bytes(share.share) + 1) % shamir.PRIME)


@pytest.mark.parametrize(
    ("corrupt", "sender", "reason"),
    [(_malformed, 1003, "16 bytes"), (_wrong_valued, 1004, "wrong share")],
    ids=["malformed", "wrong-valued"],
)
def test_a_bad_revealed_share_is_left_out_with_its_reason_and_the_sum_stays_exact(corrupt, sender, reason):
    def tamper(stage, node, reply):
        if stage == "revealed" and node == sender:
            corrupt(reply.revealed.shares[0])
        return reply

    server, nodes, vectors, total = _tampered(tamper)
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, nodes))
    assert any(d.node_id == sender and reason in d.reason for d in server.dropped)


def test_a_malformed_encrypted_share_drops_its_sender_before_anyone_masks_with_it():
    def tamper(stage, node, reply):
        if stage == "shares" and node == 1007:
            reply.shares.shares[2].nonce = b"\x00" * 5
        return reply

    server, nodes, vectors, total = _tampered(tamper)
    np.testing.assert_array_equal(total.astype(np.int64), _plain_sum(vectors, [u for u in nodes if u != 1007]))
    assert any(d.node_id == 1007 and d.stage == "shares" and "malformed share ciphertext" in d.reason for d in server.dropped)
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
        if stage == "shares" and node == 1005:
            stale = next(s for s in old[1005].shares if s.receiver == 1006)
            fresh = next(s for s in reply.shares.shares if s.receiver == 1006)
            fresh.nonce, fresh.ciphertext = stale.nonce, stale.ciphertext
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
        ("modulus_bits", 9, "modulus_bits"),
        ("graph_seed", b"short", "graph_seed"),
    ]:
        bad = pb.SecAggSetup()
        bad.CopyFrom(setup)
        setattr(bad, field, value)
        with pytest.raises(SecAggError, match=match):
            check_setup(bad)
    with pytest.raises(SecAggError, match="need 35 bits > 32"):
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


def test_ring_packing_round_trips_every_width():
    rng = np.random.default_rng(0)
    for bits in range(1, 33):
        values = rng.integers(0, 1 << bits, 77, dtype=np.uint64).astype(np.uint32)
        np.testing.assert_array_equal(ring.unpack(ring.pack(values, bits), 77, bits), values)
