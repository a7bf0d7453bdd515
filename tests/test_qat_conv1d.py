"""LSQ QAT of a 1-D CNN (``har``): its Conv1d layers are quantised, and fedge-export builds int8 from the steps."""

import json

import onnx
import pytest
import torch

from conftest import FAST
from fedge.client.qat import LSQModel
from fedge.deploy.export_cli import export_run
from fedge.simulations.experiment import run_experiment
from fedge.tasks.har import HarTask

QAT_HAR = ["task=har", "partition=iid", "num_clients=2", "rounds=2", "client.local_steps=0",
           "client.local_epochs=1", "client.lr=0.05", "client.qat.bits=8", *FAST]


def test_lsq_quantises_every_conv1d_weight_and_input():
    model = HarTask(width=8, depth=2, kernel=3).build_model()
    qat = LSQModel(model, 8, 8)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv1d)]
    assert convs and set(qat.steps()) == {f"{n}.{w}" for n in [*convs, "classifier.1"] for w in ("weight", "input")}
    x = torch.randn(4, 6, 100)
    y = qat(x)
    y.sum().backward()
    # the conv weights' steps learned something: their gradient went through the fake quantiser
    assert qat.quantiser("features/0/weight").raw_step.grad is not None
    assert qat.quantiser("features/0/input").raw_step.grad is not None
    # fake-quantised forward differs from the float one, but only by quantisation noise
    with torch.no_grad():
        assert not torch.equal(y, model(x)) and (y - model(x)).abs().max() < 0.1 * model(x).abs().max() + 1e-3


def test_har_qat_federation_exports_int8_from_its_steps_within_tolerance(make_cfg, tmp_path):
    run_experiment(make_cfg(QAT_HAR), tmp_path)
    steps = json.loads((tmp_path / "results.json").read_text())["qat"]["steps"]
    assert {"features.0.weight", "features.0.input", "classifier.1.weight"} <= set(steps)
    report = export_run(tmp_path, latency_samples=10)
    assert report["int8_method"].startswith("qat")
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["accuracy"] > 0.5  # trained (7 classes: chance is ~0.14-0.3 by class share)
    assert int8["argmax_agreement"] >= 0.99  # int8 ONNX computes what the fake-quantised torch model does
    assert int8["accuracy"] == pytest.approx(report["int8_reference_accuracy"], abs=0.01)
    assert report["accuracy_drop_pp"] <= 1.0
    assert int8["ops"]["QuantizeLinear"] >= int8["ops"]["Conv"] + int8["ops"]["Gemm"] == 4
    weights = {t.name: t for t in onnx.load(int8["path"]).graph.initializer}
    assert weights["features.0.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert report["size_ratio"] >= 1.9  # a ~9k-parameter model: names and Q/DQ nodes are a large share of the file
