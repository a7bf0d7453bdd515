"""fedge-export: a QAT federation's global model to ONNX fp32 and int8, run in onnxruntime."""

import json

import numpy as np
import onnx
import pytest

from conftest import FAST
from fedge.client.qat import LSQModel
from fedge.deploy.export_cli import ExportError, export_run, load_run, main
from fedge.deploy.onnx_model import qdq_from_steps
from fedge.simulations.experiment import run_experiment

QAT_IMAGE = ["task=image", "num_clients=2", "partition=iid", "rounds=2", "client.local_steps=25", "client.lr=0.05",
             "client.qat.bits=8", *FAST]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, make_cfg):
    out = tmp_path_factory.mktemp("qat")
    run_experiment(make_cfg(QAT_IMAGE), out)
    return out


def test_qat_int8_onnx_within_1pp_of_fp32_and_3_5x_smaller(qat_run):
    results = json.loads((qat_run / "results.json").read_text())
    assert results["qat"]["round"] == 2  # the aggregated steps of the last round are recorded
    report = export_run(qat_run, latency_samples=20)
    assert report["int8_method"].startswith("qat")
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["accuracy"] > 0.8  # a trained model on the image test split, not chance
    assert fp32["accuracy"] == pytest.approx(report["torch_accuracy"], abs=1e-3)
    assert fp32["max_abs_diff"] < 1e-4  # fp32 ONNX computes what torch computes
    # int8 ONNX against the fake-quantised torch model QAT trained, and against fp32 ONNX
    assert int8["argmax_agreement"] >= 0.99 and report["int8_vs_fp32_argmax_agreement"] >= 0.95
    assert report["accuracy_drop_pp"] <= 1.0  # int8 scores no more than 1 pp below fp32
    assert int8["accuracy"] == pytest.approx(report["int8_reference_accuracy"], abs=0.005)  # what QAT trained
    assert report["size_ratio"] >= 3.5
    # a Q/DQ pair on each layer input, and on the outputs of the 3 layers that feed another layer
    assert int8["ops"]["QuantizeLinear"] == int8["ops"]["Conv"] + int8["ops"]["Gemm"] + 3 == 7
    model = onnx.load(int8["path"])
    weights = {t.name: t for t in model.graph.initializer}
    assert weights["features.3.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert weights["features.3.bias_quantized"].data_type == onnx.TensorProto.INT32
    assert "features.3.weight" not in weights  # no float copy left behind
    assert json.loads((qat_run / "export" / "export.json").read_text())["size_ratio"] == report["size_ratio"]


def test_static_quantisation_when_qat_did_not_run(make_cfg, tmp_path, capsys):
    run_experiment(make_cfg(["rounds=2", "num_clients=2", "partition=iid", "client.local_steps=20", *FAST]), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["qat"] == {}
    main([str(tmp_path), "--latency-samples", "10", "--calibration", "64"])
    assert "smaller" in capsys.readouterr().out
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["int8_method"].startswith("static") and report["int8_reference"] == "torch float"
    assert report["int8"]["ops"].get("QuantizeLinear", 0) > 0
    assert report["int8"]["argmax_agreement"] >= 0.95
    assert report["size_ratio"] > 2.5  # digits CNN: smaller model, larger share of graph overhead
    with pytest.raises(ExportError, match="no QAT steps"):
        export_run(tmp_path, tmp_path / "forced", method="qat")


def test_bad_inputs_are_named(qat_run, tmp_path):
    with pytest.raises(ExportError, match="final_model.npz is missing"):
        (tmp_path / "results.json").write_text("{}")
        export_run(tmp_path)
    run = load_run(qat_run)
    steps = dict(run.steps)
    steps.pop("features.3.input")
    with pytest.raises(ValueError, match=r"missing \['features.3.input'\]"):
        LSQModel(run.model).load_steps(steps)
    fp32 = qat_run / "export" / "model_fp32.onnx"
    with pytest.raises(ValueError, match="no LSQ step 'features.3.input'"):
        qdq_from_steps(fp32, steps, 8, 8, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="act_bits=8"):
        qdq_from_steps(fp32, run.steps, 8, 4, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="not Conv/Gemm"):
        qdq_from_steps(fp32, {**run.steps, "nope.weight": 0.1}, 8, 8, tmp_path / "x.onnx")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert np.isfinite(list(run.steps.values())).all()


def test_4bit_weights_are_packed_int4_and_match_the_fake_quantised_model(tmp_path):
    import torch

    from fedge.deploy.onnx_model import export_fp32
    from fedge.deploy.verify import run as run_onnx
    from fedge.tasks.digits import DigitsTask

    from fedge.client import TrainConfig
    from fedge.client.training import train

    task = DigitsTask()
    data = task.load()
    test = data.test
    torch.manual_seed(0)
    model = task.build_model()
    lsq = LSQModel(model, 4, 8)
    train(model, task, data.train, TrainConfig(local_steps=30, batch_size=64), np.random.default_rng(0), lsq)
    with torch.no_grad():
        expected = lsq(torch.from_numpy(test.x)).numpy()
    fp32 = export_fp32(model, test.x.shape[1:], tmp_path / "fp32.onnx")
    int8 = qdq_from_steps(fp32, lsq.steps(), 8, 8, tmp_path / "int8.onnx")
    int4 = qdq_from_steps(fp32, lsq.steps(), 4, 8, tmp_path / "int4.onnx")
    weights = {t.name: t for t in onnx.load(str(int4)).graph.initializer}
    assert weights["features.2.weight_quantized"].data_type == onnx.TensorProto.INT4
    assert int8.stat().st_size > 1.6 * int4.stat().st_size  # two weights a byte
    got = run_onnx(int4, test.x)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    assert (expected.argmax(1) == test.y).mean() > 0.7  # a trained model, so agreement means something
