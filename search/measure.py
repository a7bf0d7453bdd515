"""What a finished trial's model needs on the device: int8 size, peak training memory, MACs.

* **int8 size and MACs**: ``fedge-export`` of the run (:func:`fedge.deploy.export_run`):
  the int8 ONNX file (QDQ from the QAT steps when the trial trained with QAT, else ONNX
  Runtime's static quantisation), its accuracy and latency in ONNX Runtime, and the MACs
  of one forward pass (torch-pruning's count).
* **Peak training memory**: one local step of the final model at the trial's batch size
  (through the fake quantisers when the trial used QAT, checkpointed when it used gradient
  checkpointing), counted with the same meter the
  devices report (:class:`fedge.client.memory.ActivationMeter`: saved activations) plus
  weights, gradients and momentum (:func:`fedge.client.memory.param_bytes`). The count
  is deterministic, so it is the device's number, not this machine's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedge.client.checkpointing import training_forward
from fedge.client.local_round import optimiser_slots
from fedge.client.memory import ActivationMeter, param_bytes
from fedge.client.qat import LSQModel
from fedge.client.train_config import TrainConfig
from fedge.deploy.export_cli import export_run, load_run
from fedge.search.budget import Measured


@dataclass(frozen=True)
class TrialModel:
    """A trial's final model as the device would get it."""

    measured: Measured
    params: int
    int8_accuracy: float  # test accuracy of the int8 ONNX model in ONNX Runtime
    fp32_accuracy: float  # the same for the fp32 ONNX model
    ort_int8_latency_ms: float  # batch-1 latency of the int8 model in ONNX Runtime, on this machine


def peak_training_bytes(run_dir: Path, training: TrainConfig) -> int:
    """Peak bytes of one local training step of ``run_dir``'s final model as ``training`` trains it.

    Read from ``training``: ``batch_size``, the optimiser's state (``momentum``: one slot)
    and gradient checkpointing (``checkpointing``, ``checkpoint_segments``): the step runs
    through the devices' own :func:`~fedge.client.checkpointing.training_forward`, so a
    checkpointed segment's activations are counted when backward recomputes them (its
    reentrant checkpoint runs inside the meter's hooks), as the devices count them.
    """
    run = load_run(run_dir)
    model = run.model.train()
    qat = LSQModel(model, run.qat_bits, run.act_bits) if run.qat_bits else None
    train = run.task.load().train
    x, y = torch.from_numpy(train.x[:training.batch_size]), torch.from_numpy(train.y[:training.batch_size])
    forward = training_forward(model, training.checkpointing, training.checkpoint_segments, qat)
    meter = ActivationMeter()
    with meter.track(model):
        run.task.loss(forward(x), y).backward()
    return meter.peak_bytes + param_bytes(model, optimiser_slots(training))


def measure_trial(run_dir: Path, training: TrainConfig, latency_samples: int = 50) -> TrialModel:
    """Export ``run_dir``'s final model (to ``run_dir/export``) and count what it needs (``training``: the
    trial's local training, see :func:`peak_training_bytes`)."""
    report = export_run(run_dir, run_dir / "export", latency_samples=latency_samples, calibration=128)
    if report["macs"] is None:
        raise ImportError("fedge-search counts MACs with torch-pruning: pip install 'fedge[search]'")
    measured = Measured(int(report["int8"]["size_bytes"]), peak_training_bytes(run_dir, training),
                        int(report["macs"]))
    return TrialModel(measured, int(report["params"]), float(report["int8"]["accuracy"]),
                      float(report["fp32"]["accuracy"]), float(report["int8"]["latency_ms"]))
