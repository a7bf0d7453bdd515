"""The device client must import and work with flwr absent (issue 2, must-show 7)."""

from import_blocker import run_without


def run_without_flwr(body: str):
    return run_without("flwr", body, timeout_s=120)


def test_blocker_really_blocks_flwr():
    proc = run_without_flwr("import flwr")
    assert proc.returncode != 0 and "flwr is blocked" in proc.stderr


def test_client_imports_and_trains_without_flwr():
    proc = run_without_flwr(
        """
        import numpy as np, torch
        import fedge.client, fedge.protos.codecs, fedge.tasks
        from fedge.client import EdgeClient, TrainConfig
        from fedge.protos.codecs import encode_update, decode_update
        from fedge.protos.v1 import task_pb2, tensor_pb2
        from fedge.tasks.base import FederatedTask, Split, TaskData

        class Tiny(FederatedTask):
            name, num_classes = "tiny", 2
            def load(self):
                raise NotImplementedError
            def build_model(self):
                return torch.nn.Linear(4, 2)

        rng = np.random.default_rng(0)
        data = Split(rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, 32))
        client = EdgeClient(Tiny(), data, node_id=7, defaults=TrainConfig(lr=0.1, local_epochs=1))
        weights = {k: v.detach().numpy() for k, v in Tiny().build_model().state_dict().items()}
        task = task_pb2.Task(task_id="t", kind="train", server_round=1, node_id=7)
        task.model.CopyFrom(encode_update(weights, "fp32", tensor_pb2.UPDATE_KIND_WEIGHTS))
        update = client.handle(task)
        assert not update.error, update.error
        delta = decode_update(update.update, weights)
        assert any(np.abs(d).sum() > 0 for d in delta.values())
        assert "flwr" not in sys.modules
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
