"""Structured (channel) pruning inside a federation (issue 15, must-show 1, 6, 7).

The architecture travels as JSON in the Task's config; both device runtimes rebuild it;
error-feedback state of the old shapes is dropped with a recorded reason; bad settings
are refused before the run starts, naming the key. Real digits federations on a small
configuration; the 3-seed image figures are in bench/optimize.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedge.client import EdgeClient, TrainConfig
from fedge.client.numpy_runtime.network import NumpyNetwork
from fedge.client.uplink import UplinkEncoder
from fedge.conf.build import ConfigError
from fedge.deploy.export_cli import export_run
from fedge.protos import config_values
from fedge.protos.codecs import CodecSpec, decode_update, encode_update
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.model_architecture import ARCHITECTURE_KEY, RESET_METRIC
from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.simulations.experiment import check_experiment, run_experiment
from fedge.tasks.digits import DigitsTask
from fedge.tasks.image import image_cnn
from fedge.tasks.layer_spec import to_torch
from fedge.tasks.shaping.architecture import from_json, to_json
from fedge.tasks.shaping.channel_pruning import ChannelPruner, ChannelPruningConfig, count_macs

FAST = ["progress=false", "backend.num_workers=0", "partition=iid", "num_clients=4"]


def _weights(spec, seed=0):
    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in to_torch(spec).state_dict().items()}


# -- the architecture on the wire -----------------------------------------------------------
def test_architecture_json_round_trips():
    spec = image_cnn(10, 16)
    text = to_json(spec)
    assert from_json(text) == spec and from_json(text.encode()) == spec
    assert to_json(from_json(text)) == text  # canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"Sequential": [["0", {"Evil": {}}]]}', "unknown layer type 'Evil'"),
        ('{"Sequential": [["0", {"Linear": {"in_features": 4, "out_features": -1}}]]}', "outside"),
        ('{"Sequential": [["0", {"Linear": {"in_features": 4, "out_features": "4"}}]]}', "str value"),
        ('{"Sequential": [["0", {"Linear": {"in_features": 4, "out_features": 4, "x": 1}}]]}', "no argument"),
        ('{"Sequential": [["0", {"Linear": {"in_features": 4}}]]}', "out_features"),
        ('{"Linear": {"in_features": 4, "out_features": 4}}', "Sequential at the top"),
        ('{"Sequential": [["0", {"Linear": {"in_features": 65536, "out_features": 65536}}]]}', "parameters, above"),
        ('{"Sequential": [' + ",".join(f'["{i}", {{"ReLU": {{}}}}]' for i in range(1100)) + "]}", "more than 1024 layers"),
    ],
)
def test_hostile_architecture_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        from_json(text)


# -- the pruning step -------------------------------------------------------------------------
def test_channel_pruning_halves_the_image_cnn_and_both_runtimes_rebuild_it():
    spec = image_cnn(10, 16)
    cfg = ChannelPruningConfig(ratio=0.35, rounds=[1])
    pruner = ChannelPruner(spec, cfg, (1, 28, 28))
    pruned = pruner(1, _weights(spec))
    assert pruned is not None and pruner(2, pruned.arrays) is None  # round 2 is not a pruning round
    assert pruned.macs <= 0.5 * pruner.report["macs_before"]
    assert pruned.widths == {"features.0": 10, "features.3": 21, "classifier.1": 42}
    # the same spec, from JSON, in torch and in numpy: same state names, shapes and logits
    received = from_json(to_json(pruned.spec))
    model = to_torch(received)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in pruned.arrays.items()})
    assert count_macs(model, (1, 28, 28))[0] == pruned.macs
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    network = NumpyNetwork(received, np.float32, 0)
    network.load(pruned.arrays)
    np.testing.assert_allclose(network.predict(x), model(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_pruning_keeps_the_most_important_channels():
    spec = image_cnn(10, 16)
    weights = _weights(spec)
    weights["features.0.weight"][3] *= 100  # channel 3 of the first conv: by far the largest norm
    pruned = ChannelPruner(spec, ChannelPruningConfig(ratio=0.5, rounds=[1]), (1, 28, 28))(1, weights)
    assert pruned is not None
    kept = pruned.arrays["features.0.weight"]
    assert any(np.allclose(row, weights["features.0.weight"][3]) for row in kept)


# -- the device: rebuild, and drop state of the old shapes with a reason --------------------------
def _task(weights, round_, config, kind="train"):
    task = task_pb2.Task(task_id=f"t{round_}", kind=kind, server_round=round_, node_id=1)
    task.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS, base_round=round_ - 1))
    config_values.to_wire(config, task.config)
    return task


@pytest.mark.parametrize("runtime", ["torch", "numpy"])
def test_device_rebuilds_and_resets_a_stale_error_feedback_residual(runtime):
    task = DigitsTask()
    data = task.load().train.subset(np.arange(64))
    client = EdgeClient(task, data, node_id=1, defaults=TrainConfig(local_steps=2, batch_size=16), runtime=runtime)
    plan = UplinkPlan(CodecSpec("topk", {"ratio": 0.05, "values": "fp32"}), error_feedback=True)
    config = {**plan.to_config()}
    spec = task.model_spec()
    weights = _weights(spec)
    first = client.handle(_task(weights, 1, config))
    assert not first.error and RESET_METRIC not in first.metrics
    assert client.uplink.residual and client.uplink.residual["features.0.weight"].shape == (16, 1, 3, 3)

    pruned = ChannelPruner(spec, ChannelPruningConfig(ratio=0.5, rounds=[2]), (1, 8, 8))(2, weights)
    assert pruned is not None
    second = client.handle(_task(pruned.arrays, 2, {**config, ARCHITECTURE_KEY: to_json(pruned.spec)}))
    assert not second.error, second.error
    assert second.metrics[RESET_METRIC] == 1.0
    reason = client.uplink.resets[-1]
    assert "round 2: model architecture changed" in reason and "dropped the error-feedback residual of" in reason
    assert client.uplink.residual["features.0.weight"].shape == (8, 1, 3, 3)  # the new shapes' residual
    delta = decode_update(second.update, pruned.arrays)
    assert {k: v.shape for k, v in delta.items()} == {k: v.shape for k, v in pruned.arrays.items()}
    # the next round with the same architecture keeps the residual
    third = client.handle(_task(pruned.arrays, 3, {**config, ARCHITECTURE_KEY: to_json(pruned.spec)}))
    assert not third.error and RESET_METRIC not in third.metrics and len(client.uplink.resets) == 1
    # a broadcast of the old shapes against the new architecture is an error reply, not a silent misfit
    bad = client.handle(_task(weights, 4, {**config, ARCHITECTURE_KEY: to_json(pruned.spec)}))
    assert bad.error
    hostile = client.handle(_task(pruned.arrays, 5, {**config, ARCHITECTURE_KEY: '{"Sequential": [["0", {"Evil": {}}]]}'}))
    assert "unknown layer type" in hostile.error


def test_uplink_encoder_resets_a_residual_of_another_shape_with_a_reason():
    encoder = UplinkEncoder()
    plan = UplinkPlan(CodecSpec("topk", {"ratio": 0.1, "values": "fp32"}), error_feedback=True)
    rng = np.random.default_rng(0)
    encoder.encode({"w": rng.normal(size=(8, 4)).astype(np.float32)}, plan, 0)
    assert encoder.residual["w"].shape == (8, 4)
    update = encoder.encode({"w": rng.normal(size=(6, 4)).astype(np.float32)}, plan, 1)
    assert encoder.resets == ["round 2: error-feedback residual does not fit the update (w: (8, 4) -> (6, 4)); dropped the error-feedback residual of 1 tensors"]
    assert decode_update(update)["w"].shape == (6, 4) and encoder.residual["w"].shape == (6, 4)


# -- a federation -------------------------------------------------------------------------------
def test_structured_pruning_federation_on_both_runtimes_with_error_feedback(make_cfg, tmp_path):
    cfg = make_cfg(
        ["shape=structured", "shape.structured.ratio=0.5", "shape.structured.rounds=[2,3]", "rounds=5",
         "client.local_steps=15", "compression=topk", "+client.runtime_mix={numpy: 0.5}", *FAST]
    )
    outcome = run_experiment(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    report = results["shape"]["structured"]
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    assert [s["round"] for s in report["steps"]] == [2, 3]
    assert results["dropped_replies"] == [] and all(r["failures"] == 0 and r["replies"] == 4 for r in results["rounds"][1:])
    spec = from_json(report["architecture"])
    expected = {k: v.shape for k, v in _weights(spec).items()}
    assert {k: v.shape for k, v in outcome.final_weights.items()} == expected
    assert outcome.result.final.accuracy > 0.5  # chance 0.1; top-1% updates, half the channels gone
    # must-show 6: the pruned model exports, int8 within 1 pp of fp32 in ONNX Runtime
    export = export_run(tmp_path, latency_samples=10, calibration=64)
    assert export["params"] == report["params_after"] and export["macs"] == report["macs_after"]
    assert export["fp32"]["max_abs_diff"] < 1e-4 and export["accuracy_drop_pp"] <= 1.0


def test_fedge_client_processes_rebuild_the_pruned_model_over_grpc(make_cfg, tmp_path):
    """The architecture crosses the real wire (signed Task, mTLS) to fedge-client processes, which rebuild it."""
    cfg = make_cfg(
        ["backend=grpc", "shape=structured", "shape.structured.ratio=0.5", "shape.structured.rounds=[2]", "rounds=3",
         "client.local_steps=5", "progress=false", "partition=iid", "num_clients=2"]
    )
    outcome = run_experiment(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dropped_replies"] == [] and [r["replies"] for r in results["rounds"][1:]] == [2, 2, 2]
    spec = from_json(results["shape"]["structured"]["architecture"])
    assert {k: v.shape for k, v in outcome.final_weights.items()} == {k: v.shape for k, v in _weights(spec).items()}
    assert results["rounds"][3]["accuracy"] > results["rounds"][0]["accuracy"]


# -- bad input, refused before the run starts, naming the key --------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["shape.structured.ratio=0.97"], r"shape.structured.ratio=0.97 prunes layer 'features.0' \(16 channels\) to zero channels"),
        (["+shape.structured.layers={features.2: 0.99}"], r"shape.structured.layers.features.2=0.99 prunes layer 'features.2' \(32 channels\) to zero"),
        (["+shape.structured.layers={features.2: 1.0}"], r"shape.structured.layers.features.2=1.0 must be in \[0, 1\)"),
        (["+shape.structured.layers={classifier.3: 0.5}"], r"shape.structured.layers.classifier.3: no prunable layer"),
        (["shape.structured.rounds=[3,30]"], r"shape.structured.rounds must be increasing rounds in \[1, rounds=20\]"),
        (["shape.structured.importance=taylor"], r"shape.structured.importance must be one of"),
        (["strategy=fedadam"], r"shape.structured with strategy FedAdam"),
        (["shape.prune.sparsity=0.5"], r"shape.structured with shape.prune.sparsity"),
    ],
)
def test_bad_structured_settings_are_refused_naming_the_key(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_experiment(make_cfg(["shape=structured", *overrides]))
