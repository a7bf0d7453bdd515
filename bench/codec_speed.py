"""Codec speed against memory bandwidth (``python -m bench.codec_speed``, part of ``make bench``).

On one core and an 11M-element float32 update (a 44 MB model, the size of a ResNet-18),
each codec's encode + decode time is compared with the time one ``memcpy`` of the update
takes (``np.copyto`` into a buffer written once before, so no page faults): a codec "at
25%" runs at a quarter of the speed of copying its input. The fast paths run beside the
plain ones they replaced (``bench/codec_baselines.py``), alternating, so both see the
same machine load:

- fp16 dense, numpy only (a process without torch, e.g. the numpy device runtime):
  the integer cast in cached blocks and the table lookup back vs numpy's casts;
- fp16 dense in a process that has torch loaded: torch's F16C casts vs numpy's casts;
- q8 (8-bit uniform, per tensor): a one-pass range (torch's ``aminmax`` where torch is
  loaded, numpy's blocked min and max in a process without it) and fused blocked passes
  straight into the payload vs full-size passes;
- global top-1% + error feedback (``UplinkEncoder``, values in 8 bits): one selection
  and a residual updated at the kept positions only vs a selection for the counts,
  another per tensor, and a dense decode subtracted from the whole update.

Writes ``bench/results/codec_speed.{json,md}``: min and median seconds of each side, the
fraction of memcpy bandwidth (minimum over minimum, and median over median; by the wall
clock and by the process's CPU time, which on a shared machine leaves out the time
other jobs held the core) and the 1-minute load average.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bench import codec_baselines as baselines
from bench import results_files
from fedge.client.uplink import UplinkEncoder
from fedge.protos.codecs import CodecSpec, decode_update, half, make_codec
from fedge.protos.codecs.plan import UplinkPlan

#: tensor name -> shape; 11,000,000 elements in all, a few large layers and small ones
SHAPES = {"conv1": (64, 3, 7, 7), "layer1": (2_000, 2_000), "layer2": (1_500, 3_000), "fc": (2_490_080,), "bias": (512,)}
TOPK = CodecSpec("topk", {"ratio": 0.01, "values": "q8", "scope": "global"})


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 1e-3).astype(np.float32) for name, shape in SHAPES.items()}


def _flat(update: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in update.values()])


@contextlib.contextmanager
def _without_torch() -> Iterator[None]:
    """Run the codecs as a process without torch does (torch is loaded here for the other rows)."""
    loaded = half.loaded_torch
    half.loaded_torch = lambda: None
    try:
        yield
    finally:
        half.loaded_torch = loaded


def _ef_old(update: dict[str, np.ndarray], residual: dict[str, np.ndarray]) -> None:
    """Error feedback around the old two-selection global top-k (as UplinkEncoder does it)."""
    corrected = {k: v + residual[k] if k in residual else v for k, v in update.items()}
    sent = decode_update(baselines.global_topk_update(corrected, 0.01, "q8"))
    residual.update({k: corrected[k] - sent[k] for k in corrected})


def _ef_new(update: dict[str, np.ndarray], encoder: UplinkEncoder, plan: UplinkPlan) -> None:
    encoder.encode(update, plan, base_round=0)


def cases(update: dict[str, np.ndarray]) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """label -> (fast path, plain path), each one encode + decode of the update."""
    flat = _flat(update)
    fp16, q8 = make_codec("fp16"), make_codec("q8")

    def fp16_new() -> None:
        fp16.decode(fp16.encode(flat, "t"))

    def fp16_numpy_only() -> None:
        with _without_torch():
            fp16.decode(fp16.encode(flat, "t"))

    def fp16_old() -> None:
        baselines.fp16_decode(baselines.fp16_encode(flat), flat.shape)

    def q8_new() -> None:
        q8.decode(q8.encode(flat, "t"))

    def q8_numpy_only() -> None:
        with _without_torch():
            q8.decode(q8.encode(flat, "t"))

    def q8_old() -> None:
        codes, lo, scale = baselines.uniform_encode(flat, 8, False)
        baselines.uniform_decode(codes, lo, scale, flat.shape)

    plan = UplinkPlan(TOPK, error_feedback=True, dense_below=0, fallback="q8")
    encoder, residual = UplinkEncoder(), dict[str, np.ndarray]()
    return {
        "fp16, numpy only (encode + decode)": (fp16_numpy_only, fp16_old),
        "fp16, torch loaded (encode + decode)": (fp16_new, fp16_old),
        "q8 per tensor (encode + decode)": (q8_new, q8_old),
        "q8 per tensor, numpy only (encode + decode)": (q8_numpy_only, q8_old),
        "global top-1% + q8 values + error feedback": (lambda: _ef_new(update, encoder, plan), lambda: _ef_old(update, residual)),
    }


def _timed(fn: Callable[[], object], wall: list[float], cpu: list[float]) -> None:
    """Run ``fn`` once; append its wall-clock and its CPU seconds (user + system, page faults included)."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    fn()
    cpu.append(time.process_time() - start_cpu)
    wall.append(time.perf_counter() - start_wall)


def _fractions(memcpy: list[float], side: list[float]) -> tuple[float, float]:
    """memcpy time over the side's time: min over min, median over median."""
    return min(memcpy) / min(side), statistics.median(memcpy) / statistics.median(side)


def measure(repeats: int) -> dict:
    torch.set_num_threads(1)
    update = _update()
    flat = _flat(update)
    buffer = np.empty_like(flat)
    np.copyto(buffer, flat)  # touch the pages once
    table = cases(update)
    clocks = ("wall", "cpu")
    memcpy: dict[str, list[float]] = {clock: [] for clock in clocks}
    times = {label: {side: {clock: list[float]() for clock in clocks} for side in ("fast", "plain")} for label in table}
    for _ in range(repeats):  # alternate: a memcpy before each case's fast and plain side
        for label, (fast, plain) in table.items():
            for side, fn in (("fast", fast), ("plain", plain)):
                _timed(lambda: np.copyto(buffer, flat), memcpy["wall"], memcpy["cpu"])
                _timed(fn, times[label][side]["wall"], times[label][side]["cpu"])
    fresh = []
    for _ in range(repeats):
        start = time.perf_counter()
        flat.copy()
        fresh.append(time.perf_counter() - start)
    rows = {}
    for label, sides in times.items():
        wall = {side: v["wall"] for side, v in sides.items()}
        rows[label] = {
            **{f"{side}_s_{stat}": fn(v) for side, v in wall.items() for stat, fn in (("min", min), ("median", statistics.median))},
            **{f"{side}_cpu_s_{stat}": fn(v["cpu"]) for side, v in sides.items() for stat, fn in (("min", min), ("median", statistics.median))},
            "fast_fraction_of_memcpy": _fractions(memcpy["wall"], wall["fast"])[0],
            "fast_fraction_of_memcpy_median": _fractions(memcpy["wall"], wall["fast"])[1],
            "fast_fraction_of_memcpy_cpu": _fractions(memcpy["cpu"], sides["fast"]["cpu"])[0],
            "fast_fraction_of_memcpy_cpu_median": _fractions(memcpy["cpu"], sides["fast"]["cpu"])[1],
            "plain_fraction_of_memcpy": _fractions(memcpy["wall"], wall["plain"])[0],
            "plain_fraction_of_memcpy_cpu": _fractions(memcpy["cpu"], sides["plain"]["cpu"])[0],
            "speedup_min": min(wall["plain"]) / min(wall["fast"]),
            "speedup_median": statistics.median(wall["plain"]) / statistics.median(wall["fast"]),
        }
    copy_s = min(memcpy["wall"])
    return {
        "elements": int(flat.size),
        "bytes": int(flat.nbytes),
        "memcpy_s_min": copy_s,
        "memcpy_s_median": statistics.median(memcpy["wall"]),
        "memcpy_cpu_s_min": min(memcpy["cpu"]),
        "memcpy_cpu_s_median": statistics.median(memcpy["cpu"]),
        "memcpy_gb_per_s": flat.nbytes / copy_s / 1e9,
        "copy_to_new_array_s_min": min(fresh),  # memcpy plus the page faults of fresh memory
        "codecs": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "# Codec speed against memory bandwidth",
        "",
        f"One core, an update of {result['elements']:,} float32 elements ({result['bytes'] / 1e6:.0f} MB). memcpy: "
        f"{1000 * result['memcpy_s_min']:.1f} ms min ({result['memcpy_gb_per_s']:.1f} GB/s); a copy into a new array (page faults included, as every decoder that returns "
        f"a new array pays them) {1000 * result['copy_to_new_array_s_min']:.1f} ms. Each row is encode + "
        f"decode; fast and plain sides alternate, each after a memcpy, {result['repeats']} runs each. "
        f"Command: `{result['command']}`.",
        "",
        "% of memcpy = memcpy time / codec time, min over min (median over median), by the wall clock and by "
        "the process's CPU time (user + system, so page faults count; on a shared machine the CPU time "
        "leaves out the time other jobs held the core).",
        "",
        *results_files.load_note(result["machine"]),
        "| codec | fast min / median (ms) | plain min / median (ms) | fast, % of memcpy: wall (min / median) | "
        "fast, % of memcpy: CPU (min / median) | plain, % of memcpy: wall / CPU | speed-up (min / median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in result["codecs"].items():
        lines.append(
            f"| {label} | {1000 * r['fast_s_min']:.0f} / {1000 * r['fast_s_median']:.0f} | "
            f"{1000 * r['plain_s_min']:.0f} / {1000 * r['plain_s_median']:.0f} | {100 * r['fast_fraction_of_memcpy']:.1f}% / "
            f"{100 * r['fast_fraction_of_memcpy_median']:.1f}% | {100 * r['fast_fraction_of_memcpy_cpu']:.1f}% / "
            f"{100 * r['fast_fraction_of_memcpy_cpu_median']:.1f}% | {100 * r['plain_fraction_of_memcpy']:.1f}% / "
            f"{100 * r['plain_fraction_of_memcpy_cpu']:.1f}% | {r['speedup_min']:.2f}x / {r['speedup_median']:.2f}x |"
        )
    lines += ["", "The fast paths write the same bytes and decode the same values as the plain ones "
              "(`tests/test_codec_speed_paths.py`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    result = measure(args.repeats)
    result.update(
        repeats=args.repeats,
        command="python -m bench.codec_speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        machine=results_files.machine(load_start, numpy=np.__version__, torch=torch.__version__),
    )
    results_files.write("codec_speed", result, markdown(result))


if __name__ == "__main__":
    main()
