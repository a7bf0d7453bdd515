"""Client bench: peak training memory and step time with and without checkpointing.

On the deep edge model (digits, ``task.model=mobilenet``), one process, one torch
thread, the two settings interleaved step by step so machine noise hits both alike.
Memory is :class:`fedge.client.memory.ActivationMeter`'s peak of autograd-saved
activations plus weights, gradients and momentum (``peak_train_bytes``); step time is
the median over the timed steps. Writes ``bench/results/client.json`` and a markdown
table ``bench/results/client.md``.

Run: ``python -m bench.client [--steps 15 --width 32 --batch 64 --segments 2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fedge.client.checkpointing import training_forward
from fedge.client.memory import ActivationMeter, param_bytes
from fedge.tasks.digits import DigitsTask

RESULTS = Path(__file__).parent / "results"


def _step(model, task, forward, x, y, optimiser) -> tuple[float, int]:
    """One SGD step; (seconds, peak activation bytes)."""
    meter = ActivationMeter()
    start = time.perf_counter()
    with meter.track(model):
        optimiser.zero_grad(set_to_none=True)
        task.loss(forward(x), y).backward()
        optimiser.step()
    return time.perf_counter() - start, meter.peak_bytes


def checkpointing(steps: int, width: int, batch: int, segments: int) -> dict:
    """Peak memory and median step time, plain vs checkpointed, interleaved."""
    torch.set_num_threads(1)
    task = DigitsTask(model="mobilenet", width=width)
    data = task.load().train
    rng = np.random.default_rng(0)
    runs = {}
    for name, on in (("plain", False), ("checkpointed", True)):
        torch.manual_seed(0)
        model = task.build_model().train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        runs[name] = (model, optimiser, training_forward(model, on, segments), [], [])
    for i in range(steps + 2):  # the first two steps warm up
        index = rng.choice(len(data), batch, replace=False)
        x, y = torch.from_numpy(data.x[index]), torch.from_numpy(data.y[index])
        for model, optimiser, forward, times, peaks in runs.values():
            seconds, peak = _step(model, task, forward, x, y, optimiser)
            if i >= 2:
                times.append(seconds)
                peaks.append(peak)
    out = {"width": width, "batch": batch, "segments": segments, "steps": steps,
           "params": sum(p.numel() for p in runs["plain"][0].parameters())}
    for name, (model, _, _, times, peaks) in runs.items():
        out[name] = {
            "peak_activation_bytes": max(peaks),
            "peak_train_bytes": max(peaks) + param_bytes(model, 1),
            "step_ms_median": 1000 * statistics.median(times),
        }
    out["memory_reduction"] = 1 - out["checkpointed"]["peak_train_bytes"] / out["plain"]["peak_train_bytes"]
    out["step_time_overhead"] = out["checkpointed"]["step_ms_median"] / out["plain"]["step_ms_median"] - 1
    return out


def markdown(results: dict) -> str:
    c = results["checkpointing"]
    lines = [
        f"## Checkpointing (digits MobileNet width {c['width']}, {c['params']} params, batch {c['batch']}, "
        f"{c['segments']} segments, median of {c['steps']} steps, 1 thread)",
        "",
        "| setting | peak activations (MB) | peak training memory (MB) | step time (ms) |",
        "|---|---|---|---|",
    ]
    for name in ("plain", "checkpointed"):
        r = c[name]
        lines.append(f"| {name} | {r['peak_activation_bytes'] / 1e6:.2f} | {r['peak_train_bytes'] / 1e6:.2f} | "
                     f"{r['step_ms_median']:.1f} |")
    lines += ["", f"Peak training memory {100 * c['memory_reduction']:.1f}% lower at "
                  f"{100 * c['step_time_overhead']:+.1f}% step time."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--segments", type=int, default=2)
    args = parser.parse_args()
    results = {"checkpointing": checkpointing(args.steps, args.width, args.batch, args.segments)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "client.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
