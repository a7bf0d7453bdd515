"""``fedge-export RUN_DIR``: a finished run's global model as ONNX fp32 and int8, verified.

Reads ``results.json`` (the composed config; ``qat``: the LSQ steps the clients learned,
averaged by the strategy) and ``final_model.npz`` from a ``fedge-sim`` or
``fedge-server`` output directory and writes, to ``RUN_DIR/export`` (or ``-o``):

* ``model_fp32.onnx``: the float model;
* ``model_int8.onnx``: QDQ int8, from the QAT steps when QAT ran
  (:func:`fedge.deploy.onnx_model.qdq_from_steps`), else ONNX Runtime's static
  quantisation calibrated on the task's training data;
* ``export.json``: per file its size, test-split accuracy, max |logit difference| and
  argmax agreement with torch (fp32 against the float model; int8 from QAT against the
  fake-quantised model QAT trained, static int8 against the float model), and latency
  per sample in ONNX Runtime; a table of the same is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fedge.client.model_io import load_arrays
from fedge.client.qat import LSQModel
from fedge.tasks.base import FederatedTask
from fedge.tasks.registry import resolve_task
from fedge.tasks.shaping.architecture import from_json, with_architecture
from fedge.tasks.shaping.lowrank import LowRankConfig, factorise, ranks_of

METHODS = ("auto", "qat", "static")


class ExportError(ValueError):
    """A run directory fedge-export cannot export; the message names the problem."""


@dataclass
class Run:
    """What fedge-export needs from a run directory."""

    config: dict
    task: FederatedTask
    model: torch.nn.Module  # the final global model, float, eval mode
    qat_bits: int  # client.qat.bits of the run (0: no QAT)
    act_bits: int
    steps: dict[str, float]  # aggregated LSQ steps ({} if none were recorded)


def load_run(run_dir: Path) -> Run:
    """The task, final global model and QAT steps of the run in ``run_dir``."""
    results_path, weights_path = run_dir / "results.json", run_dir / "final_model.npz"
    for path in (results_path, weights_path):
        if not path.is_file():
            raise ExportError(f"{run_dir} is not a finished fedge run: {path.name} is missing")
    results = json.loads(results_path.read_text())
    config = results.get("config")
    if not isinstance(config, dict) or "task" not in config or "_target_" not in config["task"]:
        raise ExportError(f"{results_path}: no config.task._target_ (expected the composed fedge-sim config)")
    kwargs = {k: v for k, v in config["task"].items() if k != "_target_"}
    try:
        task = resolve_task(config["task"]["_target_"])(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{results_path}: cannot build task {config['task']}: {exc}") from None
    structured = (results.get("shape") or {}).get("structured") or {}
    if structured.get("architecture"):  # a channel-pruned run (shape.structured): the final architecture
        try:
            task = with_architecture(task, from_json(structured["architecture"]))
        except ValueError as exc:
            raise ExportError(f"{results_path}: shape.structured.architecture: {exc}") from None
    torch.manual_seed(0)
    model = task.build_model()
    ranks = ranks_of(results.get("shape"))
    if ranks:  # a factorised run (shape.lowrank): rebuild its architecture at the recorded ranks
        factorise(model, LowRankConfig(), ranks)
    with np.load(weights_path) as npz:
        try:
            load_arrays(model, dict(npz))
        except RuntimeError as exc:
            raise ExportError(f"{weights_path} does not fit the task's model: {exc}") from None
    qat = config.get("client", {}).get("qat", {})
    steps = (results.get("qat") or {}).get("steps", {})
    return Run(config, task, model.eval(), int(qat.get("bits", 0)), int(qat.get("act_bits", 8)), steps)


@torch.no_grad()
def _logits(forward, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([forward(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])


def export_run(run_dir: Path, out_dir: Path | None = None, method: str = "auto", calibration: int = 256,
               latency_samples: int = 200, seed: int = 0) -> dict:
    """Export and verify the run in ``run_dir``; write the files and ``export.json``; return the report."""
    from fedge.deploy.onnx_model import export_fp32, graph_ops, qdq_from_steps, quantise_static
    from fedge.deploy.verify import check, run as run_onnx

    if method not in METHODS:
        raise ExportError(f"--int8 must be one of {METHODS}, got {method!r}")
    run = load_run(run_dir)
    out_dir = out_dir or run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = run.task.load()
    test = data.test
    fp32_path = export_fp32(run.model, tuple(test.x.shape[1:]), out_dir / "model_fp32.onnx")
    float_logits = _logits(run.model, test.x)

    use_qat = method == "qat" or (method == "auto" and run.qat_bits > 0 and bool(run.steps))
    if use_qat:
        if run.qat_bits == 0 or not run.steps:
            raise ExportError(f"--int8 qat: the run has no QAT steps (client.qat.bits={run.qat_bits}, "
                              f"{len(run.steps)} steps in results.json 'qat')")
        int8_path = qdq_from_steps(fp32_path, run.steps, run.qat_bits, run.act_bits, out_dir / "model_int8.onnx")
        lsq = LSQModel(run.model, run.qat_bits, run.act_bits)
        lsq.load_steps(run.steps)
        int8_reference, int8_method = _logits(lsq, test.x), f"qat (LSQ steps, {run.qat_bits}-bit weights)"
    else:
        rng = np.random.default_rng(seed)
        index = rng.choice(len(data.train), min(calibration, len(data.train)), replace=False)
        int8_path = quantise_static(fp32_path, data.train.x[np.sort(index)], out_dir / "model_int8.onnx")
        int8_reference, int8_method = float_logits, f"static (onnxruntime quantize_static, {len(index)} training examples)"
        if run.qat_bits:
            int8_method += "; the run's QAT steps were not recorded" if not run.steps else "; QAT steps ignored (--int8 static)"

    fp32_logits, int8_logits = run_onnx(fp32_path, test.x), run_onnx(int8_path, test.x)  # once each
    fp32 = check(fp32_path, fp32_logits, test.x, test.y, float_logits, graph_ops(fp32_path), latency_samples)
    int8 = check(int8_path, int8_logits, test.x, test.y, int8_reference, graph_ops(int8_path), latency_samples)
    report = {
        "run_dir": str(run_dir),
        "task": run.config["task"],
        "params": sum(p.numel() for p in run.model.parameters()),
        "macs": _macs(run.model, tuple(test.x.shape[1:])),
        "test_examples": len(test),
        "torch_accuracy": float((float_logits.argmax(1) == test.y).mean()),
        "int8_method": int8_method,
        "int8_reference": "torch fake-quantised (LSQModel)" if use_qat else "torch float",
        "int8_reference_accuracy": float((int8_reference.argmax(1) == test.y).mean()),
        "fp32": asdict(fp32),
        "int8": asdict(int8),
        "size_ratio": fp32.size_bytes / int8.size_bytes,
        "accuracy_drop_pp": 100 * (fp32.accuracy - int8.accuracy),
        "int8_vs_fp32_argmax_agreement": float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean()),
    }
    (out_dir / "export.json").write_text(json.dumps(report, indent=2))
    return report


def _macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """Multiply-accumulates of one example's forward pass (FLOPs ~ 2x), by ``torch-pruning``; None without it."""
    from fedge.tasks.shaping.channel_pruning import count_macs

    try:
        return count_macs(model, input_shape)[0]
    except ImportError:  # torch-pruning (the shape extra) not installed
        return None


def table(report: dict):
    """A rich table of the report."""
    from rich.table import Table

    macs = f", {report['macs']:,} MACs" if report.get("macs") is not None else ""
    t = Table(title=f"fedge-export: {report['params']:,} params{macs}, {report['test_examples']} test examples, "
                    f"int8 {report['int8_method']}")
    for column in ("file", "KB", "test accuracy", "max |Δ| vs torch", "argmax = torch", "ms/sample"):
        t.add_column(column, justify="left" if column == "file" else "right")
    for name in ("fp32", "int8"):
        r = report[name]
        t.add_row(Path(r["path"]).name, f"{r['size_bytes'] / 1e3:.1f}", f"{r['accuracy']:.4f}", f"{r['max_abs_diff']:.2e}",
                  f"{r['argmax_agreement']:.4f}", f"{r['latency_ms']:.3f}")
    return t


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``fedge-export``)."""
    parser = argparse.ArgumentParser(prog="fedge-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a fedge-sim / fedge-server output directory")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output directory (default RUN_DIR/export)")
    parser.add_argument("--int8", choices=METHODS, default="auto",
                        help="int8 from the QAT steps (qat), by static quantisation (static), or qat when the run has steps (auto)")
    parser.add_argument("--calibration", type=int, default=256, help="training examples for static calibration")
    parser.add_argument("--latency-samples", type=int, default=200, help="batch-1 runs timed per file")
    args = parser.parse_args(argv)
    try:
        report = export_run(args.run_dir, args.out, args.int8, args.calibration, args.latency_samples)
    except ImportError as exc:
        print(f"fedge-export: {exc}: pip install 'fedge[export]'", file=sys.stderr)
        sys.exit(2)
    except ValueError as exc:  # ExportError, or steps / bits the graph cannot take (named in the message)
        print(f"fedge-export: {exc}", file=sys.stderr)
        sys.exit(2)
    from rich.console import Console

    console = Console(width=max(Console().width, 110))
    console.print(table(report))
    console.print(f"int8 is {report['size_ratio']:.2f}x smaller; accuracy {report['fp32']['accuracy']:.4f} -> "
                  f"{report['int8']['accuracy']:.4f} ({-report['accuracy_drop_pp']:+.2f} pp); "
                  f"written to {Path(report['fp32']['path']).parent}")


if __name__ == "__main__":
    main()
