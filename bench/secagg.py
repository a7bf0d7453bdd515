"""SecAgg+ cost and accuracy (``python -m bench.secagg``, part of ``make bench``; issue 14).

Cost: one protocol round (``fedge.simulations.secagg_round.run_round``: the real device
and server state machines exchanging serialised protos, all in this process, one core)
at n = 10, 100 and 1,000 devices, for

- ``dense``: every coordinate in 8 bits (``compression=none`` or ``q8`` under ``secagg=on``);
- ``sparse``: the shared random 5% of coordinates in 8 bits (``compression=randk``);

at two update sizes: the default task's model (digits MLP, 38,283 float coordinates) and
1,000,000 coordinates (n = 10 and 100 only: 1,000 dense devices of 1M would take an hour
on this machine). Each row is set against a plaintext update of the same size and the
same 8 bits: fedge's ``q8`` codec (dense) or ``randk`` with ``q8`` values (sparse), as a
device would send it without secure aggregation.

- uplink bytes per device, two ways: "messages" = the four SecAggReply protos a device
  sends (keys, sealed shares, masked input, revealed shares) over the plaintext
  CompressedUpdate proto; "wire" = what fedge-client pushes for each of them over gRPC:
  the Update envelope (32-hex task id, a 64-bit node id) cut into transfer chunks (a
  TransferHeader with task id, size and SHA-256, gRPC's 5-byte prefix per message;
  ``fedge.protos.transfer.wire_bytes``), four pushes against one for the plaintext update.
  HTTP/2 frame and call headers are left out on both sides (about 9 bytes a frame plus
  a few HPACK-compressed header bytes a call: 3 extra calls for SecAgg);
- "exchange" bytes: those plus the protocol's own downlink (setup, roster, share bundle,
  unmask request; the model broadcast is the same with and without SecAgg and is left
  out), over the plaintext update: the closest match to Bonawitz et al.'s (2017)
  expansion factor (1.73x at 2^10 users and 1.98x at 2^14, 16-bit values, complete graph);
- device CPU seconds: quantisation (SecAggEncoder) + all four stages, against q8/randk
  encoding; server CPU seconds: the four stages (unmasking included), against decoding
  every plaintext update and summing. Per-device values: min and median over devices.

The neighbour count is the default (sized to lose 30% of the devices, ``secagg.dropout``)
plus rows with ``dropout=0.1`` to show what the knob costs; one row drops 30% of the
devices after they shared keys but before they masked (the server then rebuilds their
mask keys and removes the survivors' pairwise masks with them: its most expensive case).

Accuracy: ``fedge-sim`` defaults (digits, 10 clients, 20 rounds, Dirichlet) with
``secagg=on`` and without it (``secagg=off``, fp32 updates), 3 seeds, plus plaintext
``compression=q8`` for reference. Writes ``bench/results/secagg.{json,md}``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from bench import results_files
from fedge.client.secagg import SecAggDevice
from fedge.client.secagg_vector import SecAggEncoder
from fedge.protos import transfer
from fedge.protos.codecs import CodecSpec, decode_update, encode_update, parse_update
from fedge.protos.secagg import aead, keys, ring, shamir
from fedge.protos.secagg.graph import failure_chance
from fedge.protos.secagg.params import check_setup, float_layout, layout_digest, make_setup
from fedge.protos.v1 import secagg_pb2, task_pb2, tensor_pb2
from fedge.simulations.secagg_round import ProtocolCost, run_round
from fedge.strategies.secagg.state import SecAggServerRound

REPO = Path(__file__).resolve().parent.parent
SPARSE_RATIO = 0.05
CLIP = 0.2
PLAIN = {"dense": CodecSpec("uniform", {"bits": 8}), "sparse": CodecSpec("randk", {"ratio": SPARSE_RATIO, "values": "q8"})}
BONAWITZ = {"1.73x": "2^10 users, 16-bit values", "1.98x": "2^14 users, 16-bit values"}
#: Uplink ratios (SecAgg+ messages / plaintext q8 message) measured at main a7e539e, before
#: the wire was cut down (32-byte-commitment, nonce-carrying protobuf shares, modulus 2**m).
BEFORE = {
    (10, "digits", "dense", 0.3): 1.512, (10, "digits", "sparse", 0.3): 1.569, (10, "1M", "dense", 0.3): 1.501,
    (10, "1M", "sparse", 0.3): 1.516, (100, "digits", "dense", 0.3): 2.137, (100, "digits", "dense", 0.1): 1.914,
    (100, "digits", "sparse", 0.3): 5.703, (100, "digits", "sparse", 0.1): 2.322, (100, "1M", "dense", 0.3): 1.886,
    (100, "1M", "dense", 0.1): 1.877, (100, "1M", "sparse", 0.3): 2.084, (100, "1M", "sparse", 0.1): 1.913,
    (1000, "digits", "dense", 0.3): 2.606, (1000, "digits", "dense", 0.1): 2.296, (1000, "digits", "sparse", 0.3): 7.483,
}
#: Bytes a device sends per neighbour, at least: a sealed share pair and one revealed share.
PER_NEIGHBOUR = aead.SEALED_BYTES + shamir.SHARE_BYTES
#: A flwr node id is a random 64-bit integer: the envelope's node id is one of that size.
NODE_ID = (1 << 63) + 12345


def push_bytes(field: str, message) -> int:
    """Bytes of one fedge-client push carrying ``message`` as Update.``field`` (see the docstring)."""
    update = task_pb2.Update(task_id="0" * 32, node_id=NODE_ID, **{field: message}).SerializeToString()
    return transfer.wire_bytes(transfer.chunks(update, "0" * 32))


def _layouts() -> dict[str, dict[str, tuple[int, ...]]]:
    import torch

    from fedge.tasks.digits import DigitsTask

    torch.manual_seed(0)
    model = {k: v.numpy() for k, v in DigitsTask().build_model().state_dict().items()}
    return {
        "digits": {name: tuple(shape) for name, shape in float_layout(model)},
        "1M": {"layer1": (1000, 768), "layer2": (232, 1000), "bias": (1000,)},
    }


def _delta(layout: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 0.05, shape).astype(np.float32) for name, shape in layout.items()}


def cost_row(n: int, size: str, layout: dict, variant: str, dropout: float = 0.3, gone_before: float = 0.0) -> dict:
    """One round of SecAgg+ beside plaintext updates of the same size; bytes and CPU."""
    length = sum(math.prod(s) for s in layout.values())
    nodes = list(range(1000, 1000 + n))
    kept = max(1, math.ceil(SPARSE_RATIO * length)) if variant == "sparse" else 0
    digest = layout_digest(list(layout.items()))
    setup = make_setup(1, nodes, length, digest, value_bits=8, clip=CLIP, kept=kept, max_examples=100.0, dropout=dropout)
    plan = check_setup(setup)
    # the device's quantisation (SecAggEncoder) and the plaintext encoding, side by side, on a sample of devices
    sample = nodes[: min(n, 5)]
    quantise_s, plain_encode_s, plain_payloads = [], [], []
    for u in sample:
        delta = _delta(layout, u)
        start = time.process_time()
        SecAggEncoder().encode(plan, delta, 100, np.random.default_rng(u))
        quantise_s.append(time.process_time() - start)
        start = time.process_time()
        payload = encode_update(delta, PLAIN[variant], tensor_pb2.UPDATE_KIND_DELTA, base_round=0).SerializeToString()
        plain_encode_s.append(time.process_time() - start)
        plain_payloads.append(payload)
    plain_bytes = statistics.median(len(p) for p in plain_payloads)
    plain_wire = statistics.median(push_bytes("update", parse_update(p)) for p in plain_payloads)
    start = time.process_time()  # the plaintext server: decode every update and sum
    total_plain = None
    for i in range(n):
        decoded = decode_update(parse_update(plain_payloads[i % len(plain_payloads)]))
        flat = np.concatenate([decoded[k].ravel() for k in layout])
        total_plain = flat if total_plain is None else total_plain + flat
    plain_server_s = time.process_time() - start

    rng = np.random.default_rng(n)
    vectors = {u: rng.integers(0, 256, plan.length).astype(np.uint32) for u in nodes}
    gone = nodes[: int(round(gone_before * n))]
    server = SecAggServerRound(setup)
    cost = ProtocolCost()
    wire: dict[int, int] = {}

    def count_push(stage: str, node: int, reply: secagg_pb2.SecAggReply) -> secagg_pb2.SecAggReply:
        wire[node] = wire.get(node, 0) + push_bytes("secagg", reply)  # observes, changes nothing
        return reply

    start = time.perf_counter()
    total = run_round(server, {u: SecAggDevice(u) for u in nodes}, vectors, drop_before_masking=gone, cost=cost, tamper=count_push)
    wall = time.perf_counter() - start
    assert total is not None, server.abandoned
    want = np.sum([vectors[u].astype(np.int64) for u in nodes if u not in gone], axis=0)
    assert np.array_equal(total.astype(np.int64), want), "the unmasked sum is not exact"
    stayed = [u for u in nodes if u not in gone]
    up = [cost.uplink_bytes[u] for u in stayed]
    down = [cost.downlink_bytes[u] for u in stayed]
    device_cpu = [cost.device_cpu_s[u] + statistics.median(quantise_s) for u in stayed]
    masked_bytes = ring.packed_size(plan.length, plan.modulus)
    k = int(setup.neighbours)
    g, group_bits = ring.group_shape(plan.modulus)
    # what no SecAgg+ device can go below: the masked vector, 64 bytes a neighbour, two public keys
    floor_bytes = masked_bytes + PER_NEIGHBOUR * k + 2 * keys.PUBLIC_KEY_BYTES + keys.COMMITMENT_BYTES
    up_wire = [wire[u] for u in stayed]
    return {
        "n": n, "size": size, "variant": variant, "coordinates": length, "sent_coordinates": plan.sent_coordinates,
        "dropout_design": dropout, "gone_before_masking": len(gone),
        "neighbours": k, "threshold": plan.threshold, "modulus": plan.modulus, "bits_per_value": group_bits / g,
        "failure_chance": failure_chance(n, k, dropout),
        "plain_bytes": plain_bytes, "plain_wire_bytes": plain_wire, "masked_vector_bytes": masked_bytes,
        "floor_bytes": floor_bytes,
        # k at which this update would reach 2x on the wire (all else as measured; bitmaps ignored)
        "max_neighbours_within_2x": int((2 * plain_wire - (statistics.median(up_wire) - PER_NEIGHBOUR * k)) // PER_NEIGHBOUR),
        "uplink_bytes_median": statistics.median(up), "downlink_bytes_median": statistics.median(down),
        "uplink_wire_bytes_median": statistics.median(up_wire), "uplink_wire_ratio": statistics.median(up_wire) / plain_wire,
        "uplink_ratio": statistics.median(up) / plain_bytes,
        "exchange_ratio": statistics.median(u + d for u, d in zip(up, down)) / plain_bytes,
        "device_cpu_s_min": min(device_cpu), "device_cpu_s_median": statistics.median(device_cpu),
        "plain_device_cpu_s_min": min(plain_encode_s), "plain_device_cpu_s_median": statistics.median(plain_encode_s),
        "server_cpu_s": cost.server_cpu_s, "plain_server_cpu_s": plain_server_s, "wall_s": wall,
    }


def cost_rows(quick: bool) -> list[dict]:
    layouts = _layouts()
    plan: list[tuple] = []  # (n, size, variant, dropout the default k is sized for, share gone before masking)
    sizes = ("digits",) if quick else ("digits", "1M")
    for n in (10, 100) if quick else (10, 100, 1000):
        for size in sizes if n < 1000 else ("digits",):
            for variant in ("dense", "sparse"):
                for dropout in (0.3, 0.1) if n >= 100 else (0.3,):
                    if not (n == 1000 and variant == "sparse" and dropout == 0.1):
                        plan.append((n, size, variant, dropout, 0.0))
    if not quick:  # the small sparse update fits 2x only with few neighbours: a design for 5% dropouts (k = 14)
        plan.append((100, "digits", "sparse", 0.05, 0.0))
    plan.append((100, "digits", "dense", 0.3, 0.3))  # 30% vanish before masking: the server removes their pairwise masks
    rows = []
    for n, size, variant, dropout, gone in plan:
        row = cost_row(n, size, layouts[size], variant, dropout, gone)
        print(f"n={n} {size} {variant} k={row['neighbours']} up x{row['uplink_ratio']:.3f} wire x{row['uplink_wire_ratio']:.3f} "
              f"exchange x{row['exchange_ratio']:.3f} wall {row['wall_s']:.1f}s", flush=True)
        rows.append(row)
    return rows


def accuracy_runs(seeds: list[int], rounds: int) -> dict[str, list[dict]]:
    """Final accuracy of the default task with and without secure aggregation, per seed."""
    from hydra import compose, initialize_config_dir

    from fedge.conf.schema import register_configs
    from fedge.simulations.experiment import run_experiment

    register_configs()
    sides = {"secagg=on": ["secagg=on"], "secagg=off (fp32)": [], "secagg=off, compression=q8": ["compression=q8"]}
    out: dict[str, list[dict]] = {label: [] for label in sides}
    for seed in seeds:
        for label, overrides in sides.items():  # alternating sides, seed by seed
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=[*overrides, f"seed={seed}", f"rounds={rounds}", "progress=false"])
            start = time.perf_counter()
            result = run_experiment(cfg).result
            out[label].append({"seed": seed, "final_accuracy": result.final.accuracy, "final_loss": result.final.loss,
                               "seconds": time.perf_counter() - start})
            print(f"{label} seed {seed}: {result.final.accuracy:.4f}", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = [
        "# SecAgg+ cost and accuracy (`python -m bench.secagg`)",
        "",
        *results_files.load_note(result["machine"]),
        "The machine is shared by several agents on 2 cores: CPU seconds are `process_time` of this process "
        "(other jobs do not add to them, but caches and frequency are shared); bytes are exact.",
        "",
        "## Bytes and CPU per round",
        "",
        "One round of the real protocol in one process, devices and server exchanging serialised protos. "
        "Plaintext: the same update in fedge's 8-bit codec (`q8`; sparse: `randk` 5% with `q8` values). "
        "**wire x** = what a SecAgg+ device pushes to the server over gRPC in the round's 4 stages (each reply in "
        "fedge's Update envelope and transfer framing: task id, 64-bit node id, size, SHA-256, gRPC prefixes) / the "
        "same for its one plaintext update: the must-show ratio. msg x = the bare SecAggReply messages / the bare "
        "plaintext CompressedUpdate. exchange x = (SecAgg+ uplink messages + the protocol's downlink messages) / "
        "plaintext update (Bonawitz et al. 2017 report 1.73x-1.98x, 16-bit values, complete graph). "
        "M = the ring (n x 255 + 1), bits/value = its packing. P(fail) = the bound on the chance that 30% (or 10%) "
        "of devices vanishing leaves some device with fewer than t neighbours (`fedge.protos.secagg.graph.failure_chance`; "
        "exact for the complete graph). before = msg x measured at main a7e539e. "
        "Device CPU = quantise + 4 stages (min / median over devices).",
        "",
        "| n | size | variant | k | t | M (bits/value) | P(fail) | plain wire B | SecAgg wire B | **wire x** | msg x "
        "| before | exchange x | device CPU ms (min/med) | plain device ms | server CPU s | plain server s | gone before masking |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cost"]:
        before = BEFORE.get((r["n"], r["size"], r["variant"], r["dropout_design"])) if not r["gone_before_masking"] else None
        lines.append(
            f"| {r['n']} | {r['size']} ({r['sent_coordinates']:,} sent) | {r['variant']} | {r['neighbours']} "
            f"(dropout {r['dropout_design']}) | {r['threshold']} | {r['modulus']:,} ({r['bits_per_value']:.2f}) "
            f"| {r['failure_chance']:.1e} | {r['plain_wire_bytes']:,.0f} | {r['uplink_wire_bytes_median']:,.0f} "
            f"| **{r['uplink_wire_ratio']:.3f}** | {r['uplink_ratio']:.3f} | {f'{before:.3f}' if before else '-'} "
            f"| {r['exchange_ratio']:.3f} | {1e3 * r['device_cpu_s_min']:.1f} / {1e3 * r['device_cpu_s_median']:.1f} "
            f"| {1e3 * r['plain_device_cpu_s_median']:.2f} | {r['server_cpu_s']:.2f} | {r['plain_server_cpu_s']:.3f} "
            f"| {r['gone_before_masking']} |"
        )
    lines += ["", "## Final accuracy of the default task (digits, 10 clients, Dirichlet)", "",
              f"{result['accuracy_rounds']} rounds, seeds {result['seeds']}.", "",
              "| run | " + " | ".join(f"seed {s}" for s in result["seeds"]) + " | mean |", "|---|" + "---|" * (len(result["seeds"]) + 1)]
    for label, runs in result["accuracy"].items():
        accs = [r["final_accuracy"] for r in runs]
        lines.append(f"| {label} | " + " | ".join(f"{a:.4f} (loss {r['final_loss']:.4f})" for a, r in zip(accs, runs))
                     + f" | {statistics.mean(accs):.4f} |")
    lines += ["", "Accuracy on the 360 test images moves in steps of 0.28 pp; the final losses show the runs differ."]
    lines += ["", "## Reading the bytes", "",
              "- The masked vector: values modulo M = n x 255 + 1 (the smallest ring in which n 8-bit values cannot "
              "wrap), packed in base-M groups: log2(M) bits a value, 11.33 at n = 10, 14.64 at n = 100, 17.96 at "
              "n = 1,000, i.e. 1.42x, 1.83x, 2.25x an 8-bit value. This alone is a floor no protocol on 8-bit values "
              "can beat: the server must be able to tell n x 255 + 1 sums apart. Bonawitz et al.'s 1.73x-1.98x are "
              "for 16-bit values, where the same floor is (16 + 10) / 16 = 1.63x at 2^10 users.",
              "- Per neighbour a device sends 64 bytes: a 48-byte sealed share pair (two 16-byte Shamir shares over "
              "GF(2^127 - 1) and a 16-byte Poly1305 tag; the nonce is derived, ids are implied by the neighbour list "
              "the setup fixes) and one 16-byte revealed share. Less is not secure: the shares must carry two "
              "independent ~128-bit secrets (seed and mask key: revealing one must not reveal the other), and the "
              "server must get one of them back per neighbour. Per device: two 32-byte X25519 public keys, a 16-byte "
              "seed commitment, bitmaps (k / 8 bytes) and the framing of 4 pushes instead of 1 (about 130 bytes each).",
              "- The neighbour count k follows from `secagg.dropout` (default 0.3) and a 1-in-1,000 failure target. "
              "At n = 100 no graph sparser than the complete one meets it (the best union bound, k = 98, is 2.6e-3); the "
              "complete graph's exact chance is 2.2e-5. At dropout 0.1, k = 20 (7.2e-4).",
             ]
    sparse = [r for r in result["cost"] if r["n"] == 100 and r["size"] == "digits" and r["variant"] == "sparse"]
    for r in sparse:
        floor = r["floor_bytes"] / r["plain_wire_bytes"]
        lines.append(
            f"- Lower bound, sparse 5% of the digits model at n = 100, k = {r['neighbours']}: {r['masked_vector_bytes']:,} "
            f"bytes of masked vector + {PER_NEIGHBOUR} x {r['neighbours']} bytes of shares + 80 bytes of keys and commitment "
            f"= {r['floor_bytes']:,} bytes, {floor:.2f}x its {r['plain_wire_bytes']:,} plaintext bytes before any framing"
            + (f": no encoding fits {r['neighbours']} neighbours' shares into 2x of this update" if floor > 2 else "")
            + f". With the measured framing it is within 2x up to k = {r['max_neighbours_within_2x']}."
        )
    lines += ["- Device CPU is dominated by X25519 agreements and one mask expansion (ChaCha20) per neighbour; the "
              "server's by unmasking (Shamir reconstruction per device, a mask expansion per survivor, and per dropped "
              "device one per neighbour)."]
    lines += ["", *[f"- {line}" for line in result["findings"]], ""]
    return "\n".join(lines)


def findings(cost: list[dict], accuracy: dict[str, list[dict]]) -> list[str]:
    out = []
    for r in cost:
        if r["n"] == 100 and not r["gone_before_masking"]:
            verdict = "<= 2x" if r["uplink_wire_ratio"] <= 2 else "ABOVE 2x"
            before = BEFORE.get((r["n"], r["size"], r["variant"], r["dropout_design"]))
            out.append(f"n=100 {r['size']} {r['variant']} k={r['neighbours']} (dropout {r['dropout_design']}): uplink "
                       f"{r['uplink_wire_ratio']:.3f}x the plaintext 8-bit update on the wire ({verdict}); messages "
                       f"{r['uplink_ratio']:.3f}x (before: {f'{before:.3f}x' if before else 'not measured'}), exchange {r['exchange_ratio']:.3f}x "
                       f"(Bonawitz: 1.73x-1.98x)")
    on = accuracy.get("secagg=on", [])
    off = accuracy.get("secagg=off (fp32)", [])
    if on and off:
        gaps = [100 * (a["final_accuracy"] - b["final_accuracy"]) for a, b in zip(on, off)]
        mean_gap = 100 * (statistics.mean(a["final_accuracy"] for a in on) - statistics.mean(b["final_accuracy"] for b in off))
        out.append(f"final accuracy secagg=on - secagg=off: {', '.join(f'{g:+.2f}' for g in gaps)} pp per seed, "
                   f"{mean_gap:+.2f} pp on the mean ({'within' if abs(mean_gap) <= 0.3 else 'NOT within'} 0.3 pp)")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 10 and 100, digits size, 1 seed, 3 rounds (a smoke run)")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    seeds, rounds = ([0], 3) if args.quick else ([0, 1, 2], 20)
    cost = cost_rows(args.quick)
    accuracy = accuracy_runs(seeds, rounds)
    import cryptography

    result = {
        "machine": results_files.machine(load, cryptography=cryptography.__version__, numpy=np.__version__),
        "cost": cost, "seeds": seeds, "accuracy_rounds": rounds, "accuracy": accuracy,
        "bonawitz_2017": BONAWITZ, "findings": findings(cost, accuracy),
    }
    results_files.write("secagg_quick" if args.quick else "secagg", result, markdown(result))


if __name__ == "__main__":
    main()
