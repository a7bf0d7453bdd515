"""Client bench: checkpointing memory and time; QAT vs float accuracy; ONNX export sizes and latency.

Checkpointing: on the deep edge model (digits, ``task.model=mobilenet``), one process, one torch
thread, the two settings interleaved step by step so machine noise hits both alike.
Memory is :class:`fedge.client.memory.ActivationMeter`'s peak of autograd-saved
activations plus weights, gradients and momentum (``peak_train_bytes``); step time is
the median over the timed steps.

QAT: the same federation on ``task=image`` (small_cnn, 114k params; ``--rounds`` rounds of
FedAvg, IID over ``--clients`` clients, one local epoch, in-process, one torch thread),
float and with ``client.qat.bits=8`` and ``=4`` (8-bit activations). Each final model
goes through ``fedge-export`` (:func:`fedge.deploy.export_cli.export_run`): the float run's
int8 file by ONNX Runtime's static quantisation, the QAT runs' from their learned steps;
test accuracy of torch, fp32 ONNX and int8 ONNX, file sizes, batch-1 latency per sample
on one thread.

Writes ``bench/results/client.json`` and a markdown table ``bench/results/client.md``.

Run: ``python -m bench.client [--steps 15 --width 32 --batch 64 --segments 2 --rounds 8 --clients 5]``.
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
from fedge.deploy.export_cli import export_run
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


QAT_RUNS = {"float": [], "qat8": ["client.qat.bits=8"], "qat4": ["client.qat.bits=4"]}


def qat(rounds: int, clients: int, out: Path) -> dict:
    """Float vs 8-bit vs 4-bit-weight QAT federations on task=image, each exported and checked."""
    from hydra import compose, initialize_config_dir

    from fedge.simulations.experiment import run_experiment
    from fedge.conf.schema import register_configs

    torch.set_num_threads(1)
    register_configs()
    common = ["task=image", "partition=iid", f"num_clients={clients}", f"rounds={rounds}", "client.lr=0.05",
              "client.local_epochs=1", "backend.num_workers=0", "progress=false"]
    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    out_runs = {"rounds": rounds, "clients": clients, "settings": common, "runs": {}}
    for name, extra in QAT_RUNS.items():
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*common, *extra])
        start = time.perf_counter()
        outcome = run_experiment(cfg, out / name)
        seconds = time.perf_counter() - start
        report = export_run(out / name, latency_samples=300)
        out_runs["runs"][name] = {
            "overrides": extra,
            "federation_s": seconds,
            "torch_accuracy": outcome.result.final.accuracy,
            **{k: report[k] for k in ("int8_method", "int8_reference_accuracy", "size_ratio", "accuracy_drop_pp",
                                      "int8_vs_fp32_argmax_agreement")},
            **{f"{kind}_{k}": report[kind][k] for kind in ("fp32", "int8")
               for k in ("size_bytes", "accuracy", "max_abs_diff", "argmax_agreement", "latency_ms")},
        }
    return out_runs


def qat_markdown(q: dict) -> list[str]:
    lines = [
        f"## QAT and export (task=image, small_cnn 114,314 params, FedAvg, {q['clients']} IID clients, "
        f"{q['rounds']} rounds, 1 local epoch: fewer rounds than the README's 30; 1,000 test images)",
        "",
        "| run | torch fp32 acc | fp32 ONNX acc | int8 ONNX acc | int8 - fp32 (pp) | int8 from | fp32 KB | int8 KB | "
        "smaller | int8 argmax = torch | fp32 ms/sample | int8 ms/sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in q["runs"].items():
        method = "LSQ steps" if r["int8_method"].startswith("qat") else "ORT static"
        lines.append(
            f"| {name} | {r['torch_accuracy']:.4f} | {r['fp32_accuracy']:.4f} | {r['int8_accuracy']:.4f} | "
            f"{-r['accuracy_drop_pp']:+.2f} | {method} | {r['fp32_size_bytes'] / 1e3:.1f} | {r['int8_size_bytes'] / 1e3:.1f} | "
            f"{r['size_ratio']:.2f}x | {r['int8_argmax_agreement']:.4f} | {r['fp32_latency_ms']:.3f} | {r['int8_latency_ms']:.3f} |"
        )
    lines += ["", "int8: int8 activations and weights; qat4's file holds its 4-bit weights as ONNX INT4 (two a byte). "
              "int8 argmax = torch: agreement with the torch model the int8 file stands for (the fake-quantised "
              "LSQ model for QAT runs, the float model for ORT static). Latency: ONNX Runtime, batch 1, one thread, "
              "median of 300 test images."]
    return lines


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
    if "qat" in results:
        lines += ["", *qat_markdown(results["qat"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8, help="QAT: federation rounds")
    parser.add_argument("--clients", type=int, default=5, help="QAT: clients")
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs/bench-client"), help="QAT: run directories")
    args = parser.parse_args()
    results = {"checkpointing": checkpointing(args.steps, args.width, args.batch, args.segments)}
    results["qat"] = qat(args.rounds, args.clients, args.runs_dir)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "client.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "client.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
