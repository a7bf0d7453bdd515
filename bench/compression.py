"""Compression benchmark (``python -m bench.compression``, part of ``make bench``).

1. Federations: every codec on the digits task (a wider CNN, ``task.width=32``, ~85k
   weights), Dirichlet alpha = 0.3 over 10 clients, FedAvg, the same rounds, several
   seeds; final accuracy and cumulative uplink/downlink bytes, each as a ratio against
   float32 FedAvg run in the same bench.
2. Codec throughput: encode + decode MB/s (of float32 input) on 1M and 10M elements,
   one core, and as a fraction of the memcpy bandwidth measured in the same loop
   (memcpy, encode, decode alternate; min and median); top-1% selection time on 11M
   elements.
3. Index coding: bits against the floor log2 C(d, k), on random and real top-k sets.

Writes ``bench/results/compression.json`` and ``bench/results/compression.md``.
``--task image --must-show-only`` runs only the must-show rows (fp32, top-k + EF, top-k
without EF) on the 5,000-image MNIST sample instead, and writes
``bench/results/compression_image_must_show.{json,md}``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core for the throughput numbers

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from bench import results_files
from bench.training_delta import digits_training_delta
from fedge.protos.codecs import CodecSpec, make_codec
from fedge.protos.codecs.index_coding import encode_indices, log2_binomial
from fedge.protos.codecs.sparse import top_k_indices
from fedge.simulations.experiment import run_experiment
from fedge.conf.schema import register_configs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

#: label -> fedge-sim overrides
CODECS: dict[str, list[str]] = {
    "fp32 (baseline)": ["compression=none"],
    "top-1% + q8 + EF": ["compression=topk"],
    "top-1% + q8, no EF": ["compression=topk", "compression.error_feedback=false"],
    "fp16": ["compression=fp16"],
    "q8 per-channel": ["compression=q8"],
    "qsgd 4-bit stochastic": ["compression=qsgd"],
    "random-5% + fp16 + EF": ["compression=randk"],
    "sign + EF": ["compression=sign"],
    "PowerSGD r2 + EF": ["compression=powersgd"],
    "k-means 4-bit": ["compression=kmeans"],
    "top-1% up + q8 delta down": ["compression=downlink_q8"],
}
BASELINE = "fp32 (baseline)"
#: the rows must-show 1 compares: the baseline, the top-k recipe, the same without EF
MUST_SHOW = (BASELINE, "top-1% + q8 + EF", "top-1% + q8, no EF")

#: task -> (fedge-sim overrides, default model width, description for the table)
TASKS: dict[str, tuple[list[str], int, str]] = {
    "digits": (["task=digits"], 32, "digits CNN"),
    "image": (["task=image", "client.lr=0.01"], 16, "5,000-image MNIST sample CNN (client.lr=0.01)"),
}

THROUGHPUT_SPECS = {
    "fp16": CodecSpec("fp16"),
    "q8": CodecSpec("q8"),
    "q4 stochastic": CodecSpec("q4s"),
    "top-1% + q8": CodecSpec("topk", {"ratio": 0.01, "values": "q8"}),
    "random-1% + fp16": CodecSpec("randk", {"ratio": 0.01, "values": "fp16"}),
    "sign": CodecSpec("sign"),
    "k-means 4-bit": CodecSpec("kmeans", {"bits": 4}),
    "PowerSGD r4": CodecSpec("powersgd", {"rank": 4}),
}


def federations(
    rounds: int, seeds: list[int], width: int, alpha: float, on_codec=None, task: str = "digits", labels=None
) -> dict:
    """Run every codec (or those in ``labels``) for every seed; ``on_codec(summary so far)`` after each codec."""
    register_configs()
    runs: dict[str, list[dict]] = {}
    for label, overrides in CODECS.items():
        if labels is not None and label not in labels:
            continue
        for seed in seeds:
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose(
                    "config",
                    overrides=[
                        *TASKS[task][0],
                        *overrides,
                        f"seed={seed}",
                        f"rounds={rounds}",
                        f"task.width={width}",
                        f"partition.alpha={alpha}",
                        "progress=false",
                    ],
                )
            start = time.perf_counter()
            rounds_out = run_experiment(cfg).result.rounds
            trained = rounds_out[1:]
            runs.setdefault(label, []).append(
                {
                    "seed": seed,
                    "final_accuracy": rounds_out[-1].accuracy,
                    "uplink_bytes": sum(r.uplink_bytes for r in trained),
                    "downlink_bytes": sum(r.downlink_bytes for r in trained),
                    "uplink_bytes_per_round": sum(r.uplink_bytes for r in trained) / len(trained),
                    "seconds": time.perf_counter() - start,
                }
            )
            print(f"{label:28s} seed {seed}: acc {rounds_out[-1].accuracy:.4f}", flush=True)
        if on_codec is not None:
            on_codec(summarise(runs))
    return summarise(runs)


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per-codec means and ratios against the fp32 baseline."""
    base = runs[BASELINE]
    base_acc = statistics.mean(r["final_accuracy"] for r in base)
    base_up = statistics.mean(r["uplink_bytes"] for r in base)
    base_down = statistics.mean(r["downlink_bytes"] for r in base)
    summary = {}
    for label, items in runs.items():
        acc = [r["final_accuracy"] for r in items]
        up = statistics.mean(r["uplink_bytes"] for r in items)
        down = statistics.mean(r["downlink_bytes"] for r in items)
        summary[label] = {
            "overrides": CODECS[label],
            "mean_final_accuracy": statistics.mean(acc),
            "std_final_accuracy": statistics.pstdev(acc),
            "accuracy_minus_fp32_pp": 100 * (statistics.mean(acc) - base_acc),
            "uplink_bytes": up,
            "downlink_bytes": down,
            "uplink_reduction_vs_fp32": base_up / up,
            "downlink_reduction_vs_fp32": base_down / down,
            "runs": items,
        }
    return summary


def _best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _alternating(fns: dict[str, object], repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` (name -> no-argument callable), run in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()  # type: ignore[operator]
            times[name].append(time.perf_counter() - start)
    return times


def throughput(repeats: int = 5) -> dict:
    rng = np.random.default_rng(0)
    out: dict[str, dict] = {}
    for size_label, shape in (("1M", (1000, 1000)), ("10M", (3163, 3162))):
        x = rng.standard_normal(shape).astype(np.float32)
        buffer = np.empty_like(x)
        np.copyto(buffer, x)  # pages touched once: memcpy at memory speed
        for label, spec in THROUGHPUT_SPECS.items():
            codec = make_codec(spec)
            msg = codec.encode(x, "t", {})
            times = _alternating(
                {"memcpy": lambda: np.copyto(buffer, x), "encode": lambda: codec.encode(x, "t", {}),
                 "decode": lambda: codec.decode(msg)},
                repeats,
            )
            encode, decode, memcpy = min(times["encode"]), min(times["decode"]), min(times["memcpy"])
            median = {name: statistics.median(t) for name, t in times.items()}
            mb = x.nbytes / 1e6
            out.setdefault(label, {})[size_label] = {
                "elements": int(x.size),
                "encode_s": encode,
                "decode_s": decode,
                "memcpy_s": memcpy,
                "encode_s_median": median["encode"],
                "decode_s_median": median["decode"],
                "memcpy_s_median": median["memcpy"],
                "encode_decode_mb_per_s": mb / (encode + decode),
                "fraction_of_memcpy": memcpy / (encode + decode),
                "fraction_of_memcpy_median": median["memcpy"] / (median["encode"] + median["decode"]),
                "compression_ratio": x.nbytes / msg.ByteSize(),
            }
    big = rng.standard_normal(11_000_000).astype(np.float32)
    select = _best_of(lambda: top_k_indices(big, 110_000))
    return {"codecs": out, "top1pct_selection_11M_s": select}


def index_coding() -> dict:
    rng = np.random.default_rng(1)
    d = 1_000_000
    random_sets = {}
    for density in (0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9):
        k = int(d * density)
        idx = np.sort(rng.choice(d, size=k, replace=False))
        bits = 8 * len(encode_indices(idx, d).data)
        random_sets[str(density)] = {"k": k, "bits": bits, "floor_bits": log2_binomial(d, k), "ratio": bits / log2_binomial(d, k)}
    # real top-1% sets: the largest entries of a training delta of the digits CNN
    real = {}
    for name, tensor_delta in digits_training_delta(examples=500, width=32).items():
        delta = tensor_delta.ravel()
        if delta.size >= 1000:
            k = delta.size // 100
            bits = 8 * len(encode_indices(top_k_indices(delta, k), delta.size).data)
            real[name] = {"d": int(delta.size), "k": k, "bits": bits, "ratio": bits / log2_binomial(delta.size, k)}
    return {"random_sets_d_1M": random_sets, "real_top1pct_sets": real}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Compression benchmark",
        "",
        f"{TASKS[s.get('task', 'digits')][2]} (width {s['width']}), Dirichlet alpha={s['alpha']}, {s['clients']} clients, FedAvg, "
        f"{s['rounds']} rounds, seeds {s['seeds']}. Bytes are serialised Update/Task protos. "
        f"Command: `{s['command']}`.",
        "",
        *results_files.load_note(s["machine"]),
        "| codec | final acc (mean ± sd) | vs fp32 (pp) | uplink / round (bytes) | uplink reduction | downlink reduction |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in result.get("federations", {}).items():
        per_round = row["uplink_bytes"] / s["rounds"]
        lines.append(
            f"| {label} | {row['mean_final_accuracy']:.4f} ± {row['std_final_accuracy']:.4f} | "
            f"{row['accuracy_minus_fp32_pp']:+.2f} | {per_round:,.0f} | {row['uplink_reduction_vs_fp32']:.1f}x | "
            f"{row['downlink_reduction_vs_fp32']:.2f}x |"
        )
    lines += ["", "Top-1% rows: `conf/compression/topk.yaml`, one 1% budget over the whole update (the largest "
              "magnitudes anywhere, `scope: global`), kept values in 8 bits, tensors under 256 elements "
              "(biases) dense in 8 bits; \"no EF\" is the same with `compression.error_feedback=false`."]
    if "throughput" in result:
        lines += ["", "## Codec throughput (one core, encode + decode, MB/s of float32 input)", "",
                  "Each codec's encode and decode alternate with a memcpy of its input (into a buffer written "
                  "before: no page faults); % of memcpy = memcpy time / (encode + decode time), min over min "
                  "(median over median).", "",
                  "| codec | 1M elements | 10M elements | 10M, % of memcpy (min / median) | size ratio (10M) |",
                  "|---|---|---|---|---|"]
        for label, sizes in result["throughput"]["codecs"].items():
            big = sizes["10M"]
            fraction = (f"{100 * big['fraction_of_memcpy']:.1f}% / {100 * big['fraction_of_memcpy_median']:.1f}%"
                        if "fraction_of_memcpy" in big else "-")
            lines.append(
                f"| {label} | {sizes['1M']['encode_decode_mb_per_s']:.0f} | {big['encode_decode_mb_per_s']:.0f} | "
                f"{fraction} | {big['compression_ratio']:.1f}x |"
            )
        lines += ["", f"Top-1% selection of 11M elements: {1000 * result['throughput']['top1pct_selection_11M_s']:.0f} ms."]
    if "index_coding" in result:
        lines += ["", "## Index coding against the floor log2 C(d, k)", "", "| set | k | bits / floor |", "|---|---|---|"]
        for density, row in result["index_coding"]["random_sets_d_1M"].items():
            lines.append(f"| random, d=1M, density {density} | {row['k']:,} | {row['ratio']:.4f} |")
        for name, row in result["index_coding"]["real_top1pct_sets"].items():
            lines.append(f"| real top-1% of `{name}` (d={row['d']:,}) | {row['k']:,} | {row['ratio']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--width", type=int, default=None, help="model width (default: 32 for digits, 16 for image)")
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--skip-federations", action="store_true", help="only codec micro-benchmarks")
    parser.add_argument(
        "--must-show-only", action="store_true",
        help="federations of fp32, top-k + EF and top-k without EF only; no micro-benchmarks",
    )
    args = parser.parse_args(argv)
    width = args.width if args.width is not None else TASKS[args.task][1]
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m bench.compression " + " ".join(argv)
    result: dict = {
        "settings": {
            "task": args.task, "rounds": args.rounds, "seeds": args.seeds, "width": width, "alpha": args.alpha,
            "clients": 10, "command": command.strip(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        },
    }
    if not args.must_show_only:
        result["throughput"] = throughput()
        result["index_coding"] = index_coding()
    stem = "compression" if args.task == "digits" else f"compression_{args.task}"
    stem += "_must_show" if args.must_show_only else ""
    stem = "compression_throughput" if args.skip_federations else stem  # keeps the federation results of a full run
    RESULTS.mkdir(parents=True, exist_ok=True)

    def write(federation_summary: dict | None) -> None:
        if federation_summary is not None:
            result["federations"] = federation_summary
            (RESULTS / f"{stem}.md").write_text(markdown(result))
        result["settings"]["machine"]["load_avg_at_end"] = os.getloadavg()
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))

    write(None)
    if args.skip_federations:
        (RESULTS / f"{stem}.md").write_text(markdown(result))
    else:
        labels = MUST_SHOW if args.must_show_only else None
        write(federations(args.rounds, args.seeds, width, args.alpha, on_codec=write, task=args.task, labels=labels))
    print(f"wrote {RESULTS / f'{stem}.json'}")


if __name__ == "__main__":
    main()
