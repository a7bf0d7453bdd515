"""The numpy device runtime against torch's (issue 18, must-show 1): same gradients, same round.

Every comparison starts both runtimes from the same weights (the torch model's, built
from the task's layer spec) on the task's real data in the same batch order:

* one mini-batch in float32: every tensor's gradient within 1e-5 (relative, L2);
* one local epoch in float64 with momentum, weight decay, FedProx and L1: the deltas
  within 1e-9, also with gradient checkpointing and with frozen tensors (float32
  rounding grows chaotically over many SGD steps; float64 is the exact check);
* LSQ QAT: torch's LSQ kernel runs in float32 only (``_fake_quantize_learnable_*``
  refuses float64 gradients), so QAT is checked in float32: the quantiser bit for bit
  against torch's kernel, and a local epoch of ``har`` (learned steps included).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedge.client import EdgeClient, TrainConfig
from fedge.client.numpy_runtime.lsq import NumpyLSQ
from fedge.client.numpy_runtime.network import NumpyNetwork
from fedge.client.numpy_runtime.training import train_numpy
from fedge.client.qat import LSQModel
from fedge.client.training import train
from fedge.protos.codecs import decode_update
from fedge.tasks.base import FederatedTask, Split
from fedge.tasks.digits import DigitsTask
from fedge.tasks.har import HarTask
from fedge.tasks.image import ImageTask
from fedge.tasks.layer_spec import UnsupportedLayerError
from test_edge_client import make_task

TASKS = {
    "digits": lambda: DigitsTask(),
    "image": lambda: ImageTask(),
    "har": lambda: HarTask(),
    "mobilenet": lambda: DigitsTask(model="mobilenet", width=8),
}
_LOADED: dict[str, tuple[FederatedTask, Split]] = {}


def task_and_data(name: str) -> tuple[FederatedTask, Split]:
    if name not in _LOADED:
        task = TASKS[name]()
        _LOADED[name] = (task, task.load().train)
    return _LOADED[name]


def torch_model(task: FederatedTask, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return task.build_model().to(dtype)


def numpy_twin(task: FederatedTask, model: torch.nn.Module, dtype: type = np.float32) -> NumpyNetwork:
    net = NumpyNetwork(task.model_spec(), dtype=dtype)
    net.load({k: v.detach().numpy() for k, v in model.state_dict().items()})
    return net


def as_dtype(split: Split, dtype: type) -> Split:
    return Split(split.x.astype(dtype), split.y)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["digits", "image", "har"])
def test_one_batch_gradients_match_torch_float32(name):
    task, data = task_and_data(name)
    batch = data.subset(np.arange(32))
    model = torch_model(task)
    loss = task.loss(model(torch.from_numpy(batch.x)), torch.from_numpy(batch.y))
    loss.backward()
    net = numpy_twin(task, model)
    assert list(net.tensors) == list(model.state_dict())  # the wire's names, in order
    np_loss, grads = net.loss_and_grads(batch.x, batch.y, set(net.tensors))
    assert np_loss == pytest.approx(loss.item(), rel=1e-6)
    for name_, p in model.named_parameters():
        ref = p.grad.numpy()
        assert grads[name_].dtype == np.float32
        assert np.linalg.norm(grads[name_] - ref) <= 1e-5 * np.linalg.norm(ref), name_


def test_mobilenet_gradients_match_torch_float64():
    """Depthwise convs, GroupNorm, ReLU6, global pooling (float64: GroupNorm's weight
    gradients are sums that cancel to ~1e-5, below float32's resolution of their terms)."""
    task, data = task_and_data("mobilenet")
    batch = as_dtype(data.subset(np.arange(32)), np.float64)
    model = torch_model(task, torch.float64)
    task.loss(model(torch.from_numpy(batch.x)), torch.from_numpy(batch.y)).backward()
    _, grads = numpy_twin(task, model, np.float64).loss_and_grads(batch.x, batch.y, set(model.state_dict()))
    for name_, p in model.named_parameters():
        np.testing.assert_allclose(grads[name_], p.grad.numpy(), rtol=1e-9, atol=1e-12 * np.abs(p.grad.numpy()).max(), err_msg=name_)


def _epoch_both(name: str, cfg: TrainConfig, examples: int, frozen: set[str] = frozenset()):
    task, data = task_and_data(name)
    local = as_dtype(data.subset(np.arange(examples)), np.float64)
    model = torch_model(task, torch.float64)
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    net = numpy_twin(task, model, np.float64)
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    torch_stats = train(model, task, local, cfg, np.random.default_rng(7))
    np_stats = train_numpy(net, local, cfg, np.random.default_rng(7), set(net.tensors) - set(frozen))
    return start, model.state_dict(), net, torch_stats, np_stats


SGD_ALL_TERMS = dict(lr=0.05, momentum=0.9, weight_decay=1e-3, prox_mu=0.1, l1=1e-4, batch_size=32, local_epochs=1)


@pytest.mark.parametrize("name,examples", [("digits", 320), ("image", 128), ("har", 320), ("mobilenet", 96)])
def test_one_local_epoch_float64_deltas_match_torch(name, examples):
    start, torch_state, net, torch_stats, np_stats = _epoch_both(name, TrainConfig(**SGD_ALL_TERMS), examples)
    assert np_stats.steps == torch_stats.steps == -(-examples // 32)
    assert np_stats.samples == torch_stats.samples == examples
    assert np_stats.mean_loss == pytest.approx(torch_stats.mean_loss, abs=1e-9)
    assert np_stats.param_bytes == torch_stats.param_bytes // 1  # same formula, same tensors
    for k, v in torch_state.items():
        torch_delta, np_delta = v.numpy() - start[k], net.tensors[k] - start[k]
        assert np.abs(torch_delta).max() > 0, k
        assert np.abs(np_delta - torch_delta).max() <= 1e-9, k


@pytest.mark.parametrize("name,examples", [("digits", 320), ("mobilenet", 96)])
def test_checkpointed_epoch_float64_matches_torch_and_keeps_fewer_bytes(name, examples):
    cfg = TrainConfig(**SGD_ALL_TERMS, checkpointing=True, checkpoint_segments=2)
    start, torch_state, net, torch_stats, np_stats = _epoch_both(name, cfg, examples)
    for k, v in torch_state.items():
        assert np.abs((net.tensors[k] - start[k]) - (v.numpy() - start[k])).max() <= 1e-9, k
    plain = _epoch_both(name, TrainConfig(**SGD_ALL_TERMS), examples)[4]
    assert 0 < np_stats.peak_activation_bytes < plain.peak_activation_bytes
    if name == "mobilenet":  # 11 segments cut in two: the first half keeps only its input
        assert np_stats.peak_activation_bytes < 0.7 * plain.peak_activation_bytes


def test_frozen_tensors_epoch_float64_matches_torch():
    frozen = {"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"}
    start, torch_state, net, _, _ = _epoch_both("har", TrainConfig(**SGD_ALL_TERMS), 320, frozen)
    for k, v in torch_state.items():
        if k in frozen:
            assert np.array_equal(net.tensors[k], start[k]) and np.array_equal(v.numpy(), start[k])
        else:
            assert np.abs((net.tensors[k] - start[k]) - (v.numpy() - start[k])).max() <= 1e-9, k


@pytest.mark.parametrize("shape,step", [((32, 16, 8, 8), 0.0123), ((32, 512), 0.3), ((16, 16, 3, 3), 0.002)])
def test_lsq_quantiser_matches_torch_kernel(shape, step):
    """Forward values and input gradients bit for bit; the step's gradient (a float32 sum)
    to float32 summation order."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    scale = torch.tensor([step], requires_grad=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch._fake_quantize_learnable_per_tensor_affine(xt, scale, torch.zeros(1), -128, 127, 1 / math.sqrt(x.size * 127))
    yt.backward(torch.from_numpy(dy))
    lsq = NumpyLSQ(["layer"], 8, 8)
    lsq.load_steps({"layer.weight": step, "layer.input": step})
    y, cache = lsq.quantise("layer.input", x)
    dx = lsq.backward("layer.input", dy, cache)
    assert np.array_equal(y, yt.detach().numpy())
    assert np.array_equal(dx, xt.grad.numpy())
    assert lsq.grads["layer.input"][0] == pytest.approx(scale.grad.item(), rel=1e-5)


def test_qat_epoch_float32_har_matches_torch_steps_included():
    task, data = task_and_data("har")
    local = data.subset(np.arange(320))
    model = torch_model(task)
    net = numpy_twin(task, model)
    start = net.state()
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=32)
    qat = LSQModel(model, 8, 8)
    lsq = NumpyLSQ(net.quantised, 8, 8)
    train(model, task, local, cfg, np.random.default_rng(3), qat)
    train_numpy(net, local, cfg, np.random.default_rng(3), None, lsq)
    torch_steps, np_steps = qat.steps(), lsq.step_values()
    layers = ("features.0", "features.3", "features.6", "classifier.1")  # the three Conv1d and the Linear
    assert set(np_steps) == set(torch_steps) == {f"{n}.{w}" for n in layers for w in ("weight", "input")}
    # With the convs quantised, their outputs are sums of products of grid values: equal
    # values inside a max-pool window are common, and float32 summation order (torch's
    # conv kernel vs numpy's im2col) breaks such ties differently, routing a window's
    # gradient to another element (one batch: layers after the last max-pool agree to
    # 1e-6, the convs before it to ~2e-3). Over an epoch the small differences carry into
    # every layer: measured <= 2.1e-4 on steps, <= 4.2e-3 on weight deltas, far below what
    # a wrong formula gives (a missing STE mask or gradient scale changes them by O(1)).
    for k in torch_steps:
        assert np_steps[k] == pytest.approx(torch_steps[k], rel=1e-3), k
    for k, v in model.state_dict().items():
        torch_delta, np_delta = v.numpy() - start[k], net.tensors[k] - start[k]
        tol = 1e-2
        assert np.abs(np_delta - torch_delta).max() <= tol * np.abs(torch_delta).max(), k


def _round(runtime: str, name: str, config: dict) -> tuple[dict, dict]:
    task, data = task_and_data(name)
    reference = EdgeClient(task, data.subset(np.arange(8)), node_id=1, seed=3).trainer.arrays()
    client = EdgeClient(task, data.subset(np.arange(96)), node_id=1, seed=3, runtime=runtime,
                        defaults=TrainConfig(batch_size=32))
    update = client.handle(make_task(reference, config=config))
    assert not update.error, update.error
    return decode_update(update.update), dict(update.metrics)  # frozen tensors are not sent


@pytest.mark.parametrize("config", [{}, {"client.qat.bits": 8}, {"client.freeze": "classifier.*"}])
def test_edge_client_round_on_both_runtimes_sends_the_same_update(config):
    torch_delta, torch_metrics = _round("torch", "har", config)
    np_delta, np_metrics = _round("numpy", "har", config)
    assert set(np_delta) == set(torch_delta) and set(np_metrics) == set(torch_metrics)
    if "client.freeze" in config:
        assert not any(k.startswith("classifier.") for k in np_delta)
    # QAT: max-pool ties on the quantised grid break differently (see the QAT epoch test above)
    tol, step_rel = (1e-2, 1e-3) if "client.qat.bits" in config else (1e-5, 1e-5)
    for k in torch_delta:
        assert np_delta[k].dtype == torch_delta[k].dtype == np.float32
        assert np.abs(np_delta[k] - torch_delta[k]).max() <= tol * max(np.abs(torch_delta[k]).max(), 1e-3), k
    for k in ("num-examples", "local_steps", "train_samples", "batch_size", "checkpointing"):
        assert np_metrics[k] == torch_metrics[k], k
    assert np_metrics["train_loss"] == pytest.approx(torch_metrics["train_loss"], rel=step_rel)
    if "client.qat.bits" in config:
        steps = [k for k in np_metrics if k.startswith("qat.step.")]
        assert steps and all(np_metrics[k] == pytest.approx(torch_metrics[k], rel=step_rel) for k in steps)


def test_memory_budget_picks_the_same_settings_on_both_runtimes():
    task, data = task_and_data("mobilenet")
    probe = EdgeClient(task, data.subset(np.arange(64)), node_id=1, runtime="numpy", defaults=TrainConfig(batch_size=64))
    weights = probe.trainer.arrays()
    update = probe.handle(make_task(weights, config={"client.local_steps": 1}))
    need_mb = update.metrics["peak_train_bytes"] / (1 << 20)
    for runtime in ("numpy", "torch"):
        client = EdgeClient(task, data.subset(np.arange(64)), node_id=1, runtime=runtime,
                            defaults=TrainConfig(batch_size=64, local_steps=1))
        fitted = client.handle(make_task(weights, config={"client.memory_mb": 0.6 * need_mb}))
        assert not fitted.error, fitted.error
        assert fitted.metrics["checkpointing"] == 1.0 or fitted.metrics["batch_size"] < 64
        assert fitted.metrics["peak_train_bytes"] <= 0.6 * need_mb * (1 << 20) * 1.05


class WithDropout(FederatedTask):
    """A user's torch task whose model has a layer the numpy runtime cannot run."""

    name, num_classes = "with-dropout", 3

    def load(self):
        raise AssertionError("the data must not be touched")

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.1), torch.nn.Linear(4, 3))


class PlainUserTask(WithDropout):
    """A user's torch-only task (no layer spec) of supported layers: runs on numpy too."""

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


class Untouchable(Split):
    """Local data that fails the test if the device reads it."""

    def __len__(self) -> int:
        raise AssertionError("the data must not be touched")


def test_unsupported_layer_fails_at_start_naming_it_before_data_is_touched():
    data = Untouchable(np.zeros((4, 4), np.float32), np.zeros(4, np.int64))
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' is Dropout, which the numpy runtime does not support"):
        EdgeClient(WithDropout(), data, node_id=1, runtime="numpy")


def test_user_torch_task_of_supported_layers_runs_on_numpy():
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40))
    deltas = [
        _round_user(runtime, data) for runtime in ("torch", "numpy")
    ]
    for k in deltas[0]:
        assert np.abs(deltas[0][k] - deltas[1][k]).max() <= 1e-6, k


def _round_user(runtime: str, data: Split) -> dict:
    task = PlainUserTask()
    client = EdgeClient(task, data, node_id=1, runtime=runtime, seed=1)
    torch.manual_seed(1)
    weights = {k: v.detach().numpy() for k, v in task.build_model().state_dict().items()}
    update = client.handle(make_task(weights))
    assert not update.error, update.error
    return decode_update(update.update, weights)


def test_numpy_qat_checkpointed_equals_plain_and_keeps_fewer_bytes():
    """Recomputed segments quantise their weights and inputs again: same steps, same weights."""
    task, data = task_and_data("mobilenet")
    local = data.subset(np.arange(64))
    runs = {}
    for checkpointing in (False, True):
        net = NumpyNetwork(task.model_spec(), seed=0)
        lsq = NumpyLSQ(net.quantised, 8, 8)
        cfg = TrainConfig(local_steps=2, batch_size=32, checkpointing=checkpointing, checkpoint_segments=3)
        stats = train_numpy(net, local, cfg, np.random.default_rng(0), None, lsq)
        runs[checkpointing] = (net.state(), lsq.step_values(), stats.peak_activation_bytes)
    (plain, plain_steps, plain_bytes), (ckpt, ckpt_steps, ckpt_bytes) = runs[False], runs[True]
    assert ckpt_steps == plain_steps and len(plain_steps) == 2 * 20  # 19 convs and the linear layer
    assert all(np.array_equal(plain[k], ckpt[k]) for k in plain)
    assert ckpt_bytes < 0.7 * plain_bytes
