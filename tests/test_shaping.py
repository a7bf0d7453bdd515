"""Model shaping (issue 15): SVD factorisation, magnitude pruning, transfer, distillation, export.

Real digits federations on a small configuration (in-process clients, few rounds); the
3-seed full-size figures are in bench/, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from fedge.conf.build import ConfigError
from fedge.deploy.export_cli import export_run
from fedge.protos.codecs import decode_update, encode_update
from fedge.protos.codecs.base import CodecSpec
from fedge.simulations.experiment import check_experiment, run_experiment
from fedge.strategies.magnitude_pruning import PruningSchedule, magnitude_masks, model_sparsity
from fedge.tasks.digits import DigitsTask
from fedge.tasks.shaping.keep_zeros import keep_zeros
from fedge.tasks.shaping.lowrank import LowRankConfig, factorise

FAST = ["progress=false", "backend.num_workers=0", "partition=iid", "num_clients=4"]
CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_cfg):
    """A digits model trained federatedly (the checkpoint later runs start from)."""
    out = tmp_path_factory.mktemp("base")
    outcome = run_experiment(make_cfg(["rounds=8", "client.local_steps=20", *FAST]), out)
    return out, outcome.result.final.accuracy


# -- low-rank factorisation ----------------------------------------------------------------
def test_factorise_cuts_params_and_keeps_the_function_at_high_energy():
    torch.manual_seed(0)
    model = DigitsTask().build_model()
    x = torch.randn(16, 1, 8, 8)
    before = model(x)
    layers = factorise(model, LowRankConfig(budget=0.45, skip=["features.0"]))
    assert {layer.name for layer in layers} == {"features.2", "classifier.1", "classifier.3"}
    assert sum(l.params_before for l in layers) >= 2 * sum(l.params_after for l in layers)
    names = set(model.state_dict())
    assert {"classifier.1.0.weight", "classifier.1.1.weight", "classifier.1.1.bias"} <= names
    assert "classifier.1.weight" not in names
    # full rank reproduces the layer exactly (SVD, no truncation)
    torch.manual_seed(0)
    exact = DigitsTask().build_model()
    factorise(exact, LowRankConfig(rank=10), {"classifier.3": 10})
    assert torch.allclose(exact(x), before, atol=1e-5)
    assert model(x).shape == before.shape


def test_rank_above_a_layers_is_refused_naming_the_key(make_cfg):
    with pytest.raises(ValueError, match=r"shape.lowrank.rank=11 is above layer 'classifier.3'"):
        factorise(DigitsTask().build_model(), LowRankConfig(rank=11, layers=["classifier.3"]))
    with pytest.raises(ConfigError, match=r"shape.lowrank.rank=99 is above"):
        check_experiment(make_cfg(["shape=lowrank", "shape.lowrank.budget=0", "shape.lowrank.rank=99"]))
    with pytest.raises(ConfigError, match="exactly one of rank, energy, budget"):
        check_experiment(make_cfg(["shape=lowrank", "shape.lowrank.rank=4"]))


def test_factorised_checkpoint_fine_tunes_federatedly_and_exports(trained, make_cfg, tmp_path):
    base_dir, base_accuracy = trained
    cfg = make_cfg(
        ["shape=lowrank", f"shape.init.path={base_dir / 'final_model.npz'}", "rounds=4", "client.local_steps=20", *FAST]
    )
    outcome = run_experiment(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    layers = results["shape"]["lowrank"]
    assert sum(l["params_before"] for l in layers) >= 2 * sum(l["params_after"] for l in layers)
    assert "classifier.1.0.weight" in outcome.final_weights
    assert outcome.result.final.accuracy >= base_accuracy - 0.03  # small test split (360): 3 pp margin
    report = export_run(tmp_path, latency_samples=10, calibration=64)
    assert report["fp32"]["max_abs_diff"] < 1e-4
    assert report["accuracy_drop_pp"] <= 1.0  # int8 within 1 pp of fp32 in ONNX Runtime


# -- transfer ----------------------------------------------------------------------------
def test_transfer_freezes_the_backbone_and_trains_a_new_head(trained, make_cfg, tmp_path):
    base_dir, _ = trained
    arrays = dict(np.load(base_dir / "final_model.npz"))
    arrays["classifier.3.weight"] = arrays["classifier.3.weight"][:5]  # a 5-class head: another task's
    arrays["classifier.3.bias"] = arrays["classifier.3.bias"][:5]
    path = tmp_path / "five.npz"
    np.savez(path, **arrays)
    cfg = make_cfg(["shape=transfer", f"shape.init.path={path}", "rounds=2", "client.local_steps=10", *FAST])
    outcome = run_experiment(cfg)
    assert list(cfg.client.trainable) == ["classifier.3.weight", "classifier.3.bias"]
    for name, value in outcome.final_weights.items():
        if name.startswith("classifier.3"):
            assert not np.array_equal(value, arrays[name]) if value.shape == arrays[name].shape else True
        else:
            np.testing.assert_array_equal(value, arrays[name])  # the backbone never moved
    assert outcome.result.final.accuracy > 0.5  # a new head on a trained backbone learns fast
    with pytest.raises(ConfigError, match="shape.init.path='/nope.npz': no such file"):
        check_experiment(make_cfg(["shape=transfer", "shape.init.path=/nope.npz"]))


# -- magnitude pruning -------------------------------------------------------------------
def test_schedule_and_masks():
    schedule = PruningSchedule(0.8, 2, 6, 2)
    assert [schedule.sparsity_at(r) is not None for r in range(1, 8)] == [False, True, False, True, False, True, False]
    assert schedule.sparsity_at(6) == pytest.approx(0.8) and schedule.sparsity_at(2) == 0.0
    w = {"a.weight": np.arange(1, 101, dtype=np.float32).reshape(10, 10), "a.bias": np.ones(10, np.float32)}
    masks = magnitude_masks(w, 0.8)
    assert set(masks) == {"a.weight"} and masks["a.weight"].sum() == 20 and masks["a.weight"].ravel()[-20:].all()
    with pytest.raises(ValueError, match="shape.prune.sparsity"):
        PruningSchedule(1.0)


def test_devices_keep_the_zeros_they_receive():
    torch.manual_seed(0)
    model = keep_zeros(DigitsTask().build_model())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.1.weight"][:, ::2] = 0
    model.load_state_dict(state)
    loss = model(torch.randn(8, 1, 8, 8)).sum()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).step()
    assert (model.state_dict()["classifier.1.weight"][:, ::2] == 0).all()
    assert (model.state_dict()["classifier.1.weight"][:, 1::2] != state["classifier.1.weight"][:, 1::2]).any()


def test_nonzero_codec_is_lossless_and_small():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0
    dense = encode_update({"w": w}, CodecSpec("fp32")).SerializeToString()
    sparse = encode_update({"w": w}, CodecSpec("nonzero"))
    np.testing.assert_array_equal(decode_update(sparse, {"w": w})["w"], w)
    assert len(dense) >= 3 * len(sparse.SerializeToString())


def test_pruning_to_80pc_keeps_accuracy_and_cuts_downlink(make_cfg, tmp_path):
    common = ["rounds=8", "client.local_steps=20", "compression.downlink=nonzero", *FAST]
    dense = run_experiment(make_cfg(common))
    pruned = run_experiment(make_cfg(["shape=prune", "shape.prune.end_round=4", *common]), tmp_path)
    assert model_sparsity(pruned.final_weights) >= 0.79
    assert pruned.result.final.accuracy >= dense.result.final.accuracy - 0.03
    before = dense.result.rounds[-1].downlink_bytes
    after = pruned.result.rounds[-1].downlink_bytes
    assert before >= 3 * after, (before, after)
    report = export_run(tmp_path, latency_samples=10, calibration=64)  # must-show 6: the sparse model exports
    assert report["fp32"]["max_abs_diff"] < 1e-4 and report["accuracy_drop_pp"] <= 1.0


# -- distillation ------------------------------------------------------------------------
def test_distillation_student_4x_smaller_learns_from_the_teacher(make_cfg, tmp_path):
    teacher_dir = tmp_path / "teacher"
    run_experiment(make_cfg(["task.width=32", "rounds=6", "client.local_steps=20", *FAST]), teacher_dir)
    cfg = make_cfg(
        ["shape=distill", f"shape.distill.teacher_path={teacher_dir / 'final_model.npz'}", "shape.distill.teacher_task={width: 32}",
         "task.width=4", "rounds=4", "client.local_steps=20", *FAST],
    )
    outcome = run_experiment(cfg, tmp_path / "student")
    info = json.loads((tmp_path / "student" / "results.json").read_text())["shape"]["distill"]
    assert info["teacher_params"] >= 4 * info["student_params"]
    assert outcome.result.final.accuracy > 0.3  # chance: 0.1
    report = export_run(tmp_path / "student", latency_samples=10, calibration=64)  # must-show 6: the student exports
    assert report["params"] == info["student_params"] and report["accuracy_drop_pp"] <= 1.0
    with pytest.raises(ConfigError, match="shape.distill.teacher_to_devices must be true"):
        check_experiment(make_cfg([*cfg_overrides(cfg), "shape.distill.teacher_to_devices=false"]))


def cfg_overrides(cfg) -> list[str]:
    return [f"shape.distill.teacher_path={cfg.shape.distill.teacher_path}", "shape=distill", "shape.distill.teacher_task={width: 32}", "task.width=4"]


def test_a_teacher_of_other_classes_is_refused(make_cfg, tmp_path, trained):
    base_dir, _ = trained
    arrays = dict(np.load(base_dir / "final_model.npz"))
    arrays["classifier.3.weight"] = arrays["classifier.3.weight"][:7]
    arrays["classifier.3.bias"] = arrays["classifier.3.bias"][:7]
    np.savez(tmp_path / "t.npz", **arrays)
    with pytest.raises(ConfigError, match="shape.distill.teacher_path does not fit"):
        check_experiment(make_cfg(["shape=distill", f"shape.distill.teacher_path={tmp_path / 't.npz'}", "shape.distill.teacher_task={}"]))


# -- refused before Hydra starts, without torch -------------------------------------------------
def test_a_checkpoint_path_with_shape_none_is_refused_before_the_run_without_torch(tmp_path):
    """``shape.init.path`` set with ``shape=none`` is refused by the CLI's check (no job, no torch import)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from fedge.conf.build import ConfigError\n"
        "from fedge.conf.schema import register_configs\n"
        "from fedge.simulations.experiment_checks import check_experiment\n"
        "from hydra import compose, initialize_config_dir\n"
        "register_configs()\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        "    cfg = compose(config_name='config', overrides=['shape.init.path=/nope.npz'])\n"
        "try:\n"
        "    check_experiment(cfg)\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.splitlines() == ["shape.init.path='/nope.npz': no such file", "False"], out.stderr


STUDENT_TASK = '''
import numpy as np
from torch import nn
from fedge.tasks.base import FederatedTask, Split, TaskData


class Wrong(FederatedTask):
    name = "wrong"
    num_classes = 4
    input_shape = (5,)

    def __init__(self, out: int = 3) -> None:
        self.out = out  # the model's outputs: 3 is not the task's 4 classes

    def load(self) -> TaskData:
        x = np.zeros((8, 5), np.float32)
        y = np.arange(8, dtype=np.int64) % 4
        return TaskData(Split(x, y), Split(x, y))

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(5, self.out))
'''


def test_a_student_of_other_classes_is_refused_naming_the_key(make_cfg, tmp_path):
    (tmp_path / "wrong.py").write_text(STUDENT_TASK)
    np.savez(tmp_path / "teacher.npz", **{"0.weight": np.zeros((4, 5), np.float32), "0.bias": np.zeros(4, np.float32)})
    cfg = make_cfg(
        ["task=custom", f"task.path={tmp_path / 'wrong.py'}", "shape=distill", f"shape.distill.teacher_path={tmp_path / 'teacher.npz'}",
         "shape.distill.teacher_task={}"]
    )
    with open_dict(cfg):
        cfg.shape.distill.teacher_task = {"args": {"out": 4}}  # the teacher: the same task class with 4 outputs
    with pytest.raises(ConfigError, match=r"shape.distill: the student \(task\) model outputs 3 classes, the task has 4"):
        check_experiment(cfg)
