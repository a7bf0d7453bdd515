"""A numpy-runtime device imports and trains without torch (issue 18, must-shows 3 and 5).

The fresh-venv install of ``fedge[device]`` (size, distributions) is measured by
``python -m bench.device --install`` (it needs the package index and minutes). Here: the
extra's declared dependency closure holds no torch and no flwr, and a real fedge-client
process on the numpy runtime, with torch blocked at import, joins a server over mTLS,
verifies the signed task, trains a har round and pushes.
"""

import pytest
from test_client_without_flwr_grpc import SERVER_ONLY, dependency_closure, device_round_with_blocked_import

from fedge.client.client_cli import build_runtime, parser
from fedge.tasks.har import HarTask
from import_blocker import run_without


def run_without_torch(body: str):
    return run_without("torch", body)


def test_blocker_really_blocks_torch():
    proc = run_without_torch("import torch")
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_numpy_device_trains_and_evaluates_a_round_without_torch():
    proc = run_without_torch(
        """
        import numpy as np
        import fedge.client, fedge.client.client_cli, fedge.protos.codecs
        from fedge.client import EdgeClient, TrainConfig
        from fedge.protos import config_values as wire_config
        from fedge.protos.codecs import encode_update, decode_update
        from fedge.protos.v1 import task_pb2, tensor_pb2
        from fedge.tasks.har import HarTask

        task = HarTask()
        data = task.load().train.subset(np.arange(200))
        client = EdgeClient(task, data, node_id=7, defaults=TrainConfig(local_epochs=1, batch_size=32), runtime="numpy")
        weights = client.trainer.arrays()
        train = task_pb2.Task(task_id="t", kind="train", server_round=1, node_id=7)
        train.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS))
        wire_config.to_wire({"client.qat.bits": 8}, train.config)  # QAT too: no torch kernel needed
        update = client.handle(train)
        assert not update.error, update.error
        delta = decode_update(update.update, weights)
        assert all(np.abs(d).sum() > 0 for d in delta.values())
        assert update.metrics["local_steps"] == 7 and update.metrics["peak_activation_bytes"] > 0
        assert update.metrics["qat.step.classifier.1.weight"] > 0
        evaluate = task_pb2.Task(task_id="e", kind="evaluate", server_round=1, node_id=7)
        evaluate.model.CopyFrom(encode_update({k: weights[k] + delta[k] for k in weights}, "fp32",
                                              tensor_pb2.UPDATE_KIND_WEIGHTS))
        scored = client.handle(evaluate)
        assert not scored.error and 0 <= scored.metrics["accuracy"] <= 1
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_torch_device_without_torch_says_so():
    proc = run_without_torch(
        """
        import numpy as np
        from fedge.client import EdgeClient
        from fedge.tasks.base import Split
        from fedge.tasks.har import HarTask
        EdgeClient(HarTask(), Split(np.zeros((2, 6, 100), np.float32), np.zeros(2, np.int64)), node_id=1)
        """
    )
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_fedge_client_refuses_an_unsupported_model_before_reading_its_data(tmp_path):
    args = parser().parse_args([
        "--server", "127.0.0.1:1", "--insecure", "--device-id", "d1", "--runtime", "numpy",
        "--task", "test_numpy_runtime_parity:WithDropout", "--data", str(tmp_path / "absent.npz"),
    ])
    with pytest.raises(ValueError, match=r"layer '1' is Dropout"):
        build_runtime(args)
    args.runtime = "torch"  # the torch runtime gets as far as the (absent) data file
    with pytest.raises(ValueError, match="does not exist"):
        build_runtime(args)


def test_the_device_extra_installs_no_torch_and_no_flwr():
    closure = dependency_closure("fedge", ("device",))
    assert {"numpy", "grpcio", "protobuf", "cryptography"} <= closure
    assert "torch" not in closure and not closure & SERVER_ONLY, sorted(closure)
    assert "torch" in dependency_closure("fedge", ("client",))  # the torch runtime's extra keeps torch


def test_fedge_client_numpy_process_trains_har_over_mtls_with_torch_blocked(tmp_path):
    probe, report, err = device_round_with_blocked_import(
        tmp_path, HarTask(), "har", "torch", {"torch", "flwr", "hydra", "ray"}, ("--runtime", "numpy")
    )
    assert probe.ok, probe.reply.error.reason  # the server side is torch, as always
    assert probe.reply.content["metrics"]["num-examples"] == 150.0
    assert report == {"exit": 0, "heavy": []}, err[-2000:]
