"""Lean on-device training: checkpointing, activation memory, L1, frozen tensors."""

import numpy as np
import pytest
import torch

from conftest import FAST
from fedge.client import EdgeClient, TrainConfig
from fedge.client.model_io import model_arrays
from fedge.client.qat import LSQModel
from fedge.client.training import train
from fedge.simulations.experiment import run_experiment
from fedge.tasks.digits import DigitsTask
from test_edge_client import make_task


@pytest.fixture(scope="module")
def deep():
    task = DigitsTask(model="mobilenet", width=8)
    return task, task.load()


def _train(task, data, **cfg):
    torch.manual_seed(0)
    model = task.build_model()
    stats = train(model, task, data.train.subset(np.arange(128)), TrainConfig(**{"local_steps": 3, "batch_size": 64, **cfg}),
                  np.random.default_rng(0))
    return model, stats


def test_checkpointing_same_training_less_activation_memory(deep):
    task, data = deep
    plain, plain_stats = _train(task, data)
    ckpt, ckpt_stats = _train(task, data, checkpointing=True, checkpoint_segments=2)
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert plain_stats.peak_activation_bytes > 0
    assert ckpt_stats.peak_activation_bytes < 0.7 * plain_stats.peak_activation_bytes
    # Deterministic: the same run measures the same bytes.
    assert _train(task, data)[1].peak_activation_bytes == plain_stats.peak_activation_bytes


def test_activation_meter_scales_with_batch(deep):
    task, data = deep
    small = _train(task, data, local_steps=1, batch_size=16)[1].peak_activation_bytes
    large = _train(task, data, local_steps=1, batch_size=64)[1].peak_activation_bytes
    assert 3.5 * small < large < 4.5 * small


class _OwnForward(torch.nn.Module):
    """A user's model with its own forward(): checkpoint_sequential cannot cut it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = DigitsTask().build_model()

    def forward(self, x):
        return self.body(x)


class _OwnForwardDigits(DigitsTask):
    def build_model(self):
        return _OwnForward()


def test_checkpointing_on_non_sequential_model_fails_the_task():
    task = _OwnForwardDigits()
    data = task.load()
    client = EdgeClient(task, data.train.subset(np.arange(32)), node_id=1)
    update = client.handle(make_task(model_arrays(client.model), config={"client.checkpointing": True}))
    assert "nn.Sequential" in update.error and "task.model=mobilenet" in update.error
    # The built-in CNNs are layer specs, built as nn.Sequential(features, classifier): they checkpoint.
    digits = EdgeClient(DigitsTask(), data.train.subset(np.arange(32)), node_id=1)
    update = digits.handle(make_task(model_arrays(digits.model), config={"client.checkpointing": True}))
    assert not update.error and update.metrics["checkpointing"] == 1.0


def test_memory_metrics_and_l1_in_client_update(deep):
    task, data = deep
    client = EdgeClient(task, data.train.subset(np.arange(64)), node_id=1, defaults=TrainConfig(local_steps=2))
    update = client.handle(make_task(model_arrays(client.model), config={"client.l1": 1e-3}))
    assert not update.error
    assert update.metrics["peak_train_bytes"] > update.metrics["peak_activation_bytes"] > 0


def test_frozen_backbone_partial_updates(make_cfg):
    """Frozen backbone: uplink carries only the head; the backbone stays bit-identical."""
    base = ["task.model=mobilenet", "task.width=8", "rounds=2", "num_clients=4", "partition=iid",
            "client.local_steps=3", *FAST]
    full = run_experiment(make_cfg(base))
    cfg = make_cfg([*base, "client.trainable=[9.*]"])
    part = run_experiment(cfg)
    task = DigitsTask(model="mobilenet", width=8)
    torch.manual_seed(cfg.seed)
    initial = model_arrays(task.build_model())
    head = [k for k in initial if k.startswith("9.")]
    share = sum(initial[k].nbytes for k in head) / sum(v.nbytes for v in initial.values())
    for record_full, record_part in zip(full.result.rounds[1:], part.result.rounds[1:]):
        assert record_part.replies == 4 and record_part.dropped == 0
        ratio = record_part.uplink_bytes / record_full.uplink_bytes
        assert ratio < share + 0.1, (ratio, share)
    for name, value in part.final_weights.items():
        if name in head:
            assert not np.array_equal(value, initial[name])
        else:
            assert np.array_equal(value, initial[name]), name  # bit-identical


def test_frozen_tensor_sent_anyway_is_refused(deep):
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg

    from fedge.server import run_federation
    from fedge.server.evaluation import CentralEvaluator
    from fedge.simulations.clients import ClientRecipe, node_id_of
    from fedge.simulations.local_grid import LocalGrid
    from fedge.strategies import CompressedStrategy

    task, data = deep
    parts = {node_id_of(i): np.arange(i * 50, (i + 1) * 50) for i in range(2)}
    recipe = ClientRecipe(task, parts, TrainConfig(local_steps=1))
    torch.manual_seed(0)
    initial = ArrayRecord(task.build_model().state_dict())
    # The server freezes the stem; the clients (config without freeze) send it anyway.
    strategy = CompressedStrategy(FedAvg(fraction_evaluate=0.0), freeze=["0.*"])
    with LocalGrid(recipe, 0) as grid:
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 1,
                                ConfigRecord(TrainConfig(local_steps=1).to_config()))
    assert result.rounds[-1].dropped == 2
    assert "unexpected ['0.0.weight'" in strategy.log.dropped[0].reason


def test_qat_config_flat_keys_and_lsq_steps_learn(deep):
    task, data = deep
    cfg = TrainConfig().updated_from({"client.qat.bits": 4, "client.qat.start_round": 2})
    assert (cfg.qat.bits, cfg.qat.start_round) == (4, 2)
    assert TrainConfig(qat={"bits": 8}).to_config()["client.qat.bits"] == 8
    with pytest.raises(ValueError, match="qat.bits"):
        TrainConfig(qat={"bits": 9})
    client = EdgeClient(task, data.train.subset(np.arange(64)), node_id=1, defaults=TrainConfig(local_steps=3))
    weights = model_arrays(client.model)
    wire = {"client.qat.bits": 4, "client.qat.start_round": 2}
    assert not client.handle(make_task(weights, round_=1, config=wire)).error
    assert client.qat is None  # float training before start_round
    update = client.handle(make_task(weights, round_=2, config=wire))
    assert not update.error and client.qat is not None
    steps = client.qat.steps()
    assert all(s > 0 for s in steps.values()) and len(steps) == 2 * len(client.qat.layers)
    # The reply carries the learned steps, so the server can aggregate them for export.
    assert {k: v for k, v in update.metrics.items() if k.startswith("qat.step.")} == pytest.approx(
        {f"qat.step.{k}": v for k, v in steps.items()})
    # Weights seen by the forward pass are on the 4-bit grid of the learned step.
    q = client.qat.quantisers["0/0/weight"]
    wq = q(client.model[0][0].weight).detach()
    assert len(torch.unique(wq)) <= 16


def test_memory_budget_refuses_or_fits_measured():
    task = DigitsTask(model="mobilenet", width=32)
    data = task.load()
    local = data.train.subset(np.arange(128))
    client = EdgeClient(task, local, node_id=1, defaults=TrainConfig(local_steps=2, batch_size=64))
    weights = model_arrays(client.model)
    update = client.handle(make_task(weights, config={"client.memory_mb": 0.5}))
    assert "memory budget 0.5 MB is too small" in update.error and "needs at least" in update.error
    plain = client.handle(make_task(weights, round_=2))
    need = plain.metrics["peak_train_bytes"]
    budget_mb = 0.6 * need / (1 << 20)  # fits only with checkpointing or a smaller batch
    fitted = client.handle(make_task(weights, round_=3, config={"client.memory_mb": budget_mb}))
    assert not fitted.error
    assert fitted.metrics["peak_train_bytes"] <= budget_mb * (1 << 20)  # measured, not estimated
    assert fitted.metrics["checkpointing"] == 1.0 or fitted.metrics["batch_size"] < 64


def test_qat_with_checkpointing_same_training_less_memory(deep):
    """Checkpointed QAT recomputes the fake-quantised pieces: same weights and steps, fewer saved activations."""
    task, data = deep
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = task.build_model()
        qat = LSQModel(model, 8, 8)
        stats = train(model, task, data.train.subset(np.arange(128)),
                      TrainConfig(local_steps=3, batch_size=64, checkpointing=checkpointing, checkpoint_segments=2),
                      np.random.default_rng(0), qat)
        runs.append((model, qat, stats))
    (plain, plain_qat, plain_stats), (ckpt, ckpt_qat, ckpt_stats) = runs
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    first = next(iter(plain_qat.steps()))
    assert plain_qat.steps()[first] != pytest.approx(LSQModel(task.build_model()).steps()[first])  # steps learned
    for key, step in plain_qat.steps().items():
        assert ckpt_qat.steps()[key] == pytest.approx(step, rel=1e-4), key
    assert ckpt_stats.peak_activation_bytes < 0.7 * plain_stats.peak_activation_bytes
