"""Intermediate-feature distillation (attention transfer) and the CNN's ``hidden`` knob (issue 15).

A real digits federation on a small configuration (in-process clients, few rounds); the
3-seed full-size figures are in ``bench/results/optimize.md``, not here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fedge.conf.build import ConfigError
from fedge.deploy.export_cli import export_run
from fedge.simulations.experiment import check_experiment, run_experiment
from fedge.tasks.digits import DigitsTask
from fedge.tasks.image import ImageTask
from fedge.tasks.shaping.distillation import (
    FeatureTap,
    Teacher,
    annealed_alpha,
    attention_loss,
    attention_map,
    distillation_loss,
)
from fedge.tasks.shaping.shaped_task import ShapedTask

FAST = ["progress=false", "backend.num_workers=0", "partition=iid", "num_clients=4", "client.local_steps=20"]


def test_attention_maps_ignore_channel_count_and_scale_but_not_where_the_energy_is():
    torch.manual_seed(0)
    f = torch.randn(3, 8, 5, 5)
    wide = torch.cat([f, f, f, f], 1) * 7.0  # 32 channels, same per-position energy up to a factor
    assert attention_map(f).shape == (3, 25)
    assert attention_loss(f, wide).item() < 1e-10
    shifted = torch.roll(f, shifts=2, dims=3)
    assert attention_loss(f, shifted).item() > 1e-3
    with pytest.raises(ValueError, match="differ in H x W"):
        attention_loss(f, torch.randn(3, 8, 4, 4))
    with pytest.raises(ValueError, match=r"needs \(N, C, H, W\)"):
        attention_map(torch.randn(3, 10))


def test_a_tap_keeps_the_last_forward_and_never_a_stale_one():
    model = DigitsTask(width=4).build_model()
    tap = FeatureTap("features")
    tap.attach(model)
    model(torch.zeros(2, 1, 8, 8))
    assert tap.take().shape == (2, 8, 4, 4)
    with pytest.raises(RuntimeError, match="did not run"):
        tap.take()
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        FeatureTap("nope").attach(model)


def test_the_feature_term_adds_to_the_loss_and_trains_the_student_convs():
    torch.manual_seed(0)
    teacher = Teacher(DigitsTask(width=16).build_model(), "features")
    task = ShapedTask(DigitsTask(width=4), teacher=teacher, temperature=4.0, alpha=0.5, feature_weight=1000.0)
    student = task.build_model()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    logits = student(x)
    loss = task.training_loss(logits, y, x)
    soft_and_hard = distillation_loss(logits, teacher.logits(x), y, 4.0, 0.5)
    assert loss.item() > soft_and_hard.item() + 1e-6  # the hint term is there
    hint = loss - soft_and_hard
    hint.backward()
    conv = student.get_submodule("features.0").weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0  # the hint reaches the student's first conv
    head = student.get_submodule("classifier.3").weight
    assert head.grad is None or head.grad.abs().max() < 1e-8  # and nothing after the tapped layer (rounding only)
    with pytest.raises(ValueError, match="needs a teacher tapping a layer"):
        ShapedTask(DigitsTask(width=4), teacher=Teacher(DigitsTask().build_model()), feature_weight=1.0)


def test_a_feature_distilling_task_pickles_to_a_worker_with_its_taps_wired():
    """The simulation's worker processes get the task pickled: the teacher's hook must still feed its own tap."""
    import pickle

    task = ShapedTask(DigitsTask(width=4), teacher=Teacher(DigitsTask().build_model(), "features"), feature_weight=20.0)
    task.teacher.logits(torch.zeros(1, 1, 8, 8))  # a stored batch is not pickled along
    copy = pickle.loads(pickle.dumps(task))
    assert copy.teacher is not None and copy.teacher.tap is not None and copy.teacher.tap.output is None
    student, x = copy.build_model(), torch.randn(4, 1, 8, 8)
    loss = copy.training_loss(student(x), torch.zeros(4, dtype=torch.long), x)
    assert torch.isfinite(loss) and copy.teacher.tap.output is None  # both taps were read


def test_hidden_shrinks_the_head_and_keeps_the_default_architecture():
    assert sum(p.numel() for p in ImageTask().build_model().parameters()) == 114_314  # default unchanged
    small = ImageTask(width=8, hidden=30).build_model()
    assert sum(p.numel() for p in small.parameters()) == 27_284  # 4.19x fewer, twice width 4's channels
    assert isinstance(small.get_submodule("classifier.1"), nn.Linear) and small.get_submodule("classifier.1").out_features == 30
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="hidden must be an integer >= 1"):
            DigitsTask(hidden=bad)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, make_cfg):
    out = tmp_path_factory.mktemp("teacher")
    run_experiment(make_cfg(["task.width=16", "rounds=4", *FAST]), out)
    return out


def distill(teacher_dir, *extra: str) -> list[str]:
    return ["shape=distill", f"shape.distill.teacher_path={teacher_dir / 'final_model.npz'}",
            "shape.distill.teacher_task={width: 16}", "+shape.distill.teacher_task.hidden=64", *extra]


def test_feature_distilled_student_with_a_small_head_trains_and_exports(teacher_dir, make_cfg, tmp_path):
    cfg = make_cfg([*distill(teacher_dir, "shape.distill.feature_weight=20"), "task.width=8", "task.hidden=16",
                    "rounds=3", *FAST])
    outcome = run_experiment(cfg, tmp_path / "student")
    info = json.loads((tmp_path / "student" / "results.json").read_text())["shape"]["distill"]
    assert info["teacher_params"] > 2 * info["student_params"]
    assert outcome.result.final.accuracy > 0.3  # chance: 0.1
    report = export_run(tmp_path / "student", latency_samples=10, calibration=64)  # must-show 6: it exports
    assert report["params"] == info["student_params"] and report["accuracy_drop_pp"] <= 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["shape.distill.feature_weight=-1"], "shape.distill.feature_weight must be >= 0, got -1"),
        (["shape.distill.feature_weight=1", "shape.distill.feature_layer=''"], "shape.distill.feature_layer: name the module"),
        (["shape.distill.feature_weight=1", "shape.distill.feature_layer=blocks"],
         r"shape.distill.feature_layer: the teacher \(the model has no submodule named 'blocks'\)"),
        (["shape.distill.feature_weight=1", "shape.distill.feature_layer=classifier"],
         r"shape.distill.feature_layer='classifier': student output \(10,\) and teacher output \(10,\) must both be \(C, H, W\)"),
        (["task.hidden=0"], "task.hidden must be an integer >= 1, got 0"),
        (["shape.distill.teacher_task.hidden=0"], "hidden must be an integer >= 1, got 0"),
        (["shape.distill.anneal_rounds=1"], r"shape.distill.anneal_rounds must be 0 \(off\) or >= 2, got 1"),
        (["shape.distill.anneal_rounds=-4"], r"shape.distill.anneal_rounds must be 0 \(off\) or >= 2, got -4"),
        (["shape.distill.anneal_rounds=5", "shape.distill.alpha_end=1.5"], r"shape.distill.alpha_end must be in \[0, 1\], got 1.5"),
    ],
)
def test_bad_feature_settings_are_refused_before_the_run_naming_the_key(teacher_dir, make_cfg, extra, message):
    with pytest.raises(ConfigError, match=message):
        check_experiment(make_cfg([*distill(teacher_dir, *extra), "task.width=4"]))



@pytest.mark.parametrize("override", ["task.hidden=0", "task.width=-2", "task.hidden=2.5"])
def test_bad_model_sizes_are_refused_without_shaping_naming_the_key(make_cfg, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} must be an integer >= 1"):
        check_experiment(make_cfg(["task=image", override]))


# -- annealed alpha: more teacher early, more labels late --------------------------------
def test_annealed_alpha_moves_linearly_to_its_end_then_holds():
    assert [round(annealed_alpha(0.5, 0.1, 5, r), 6) for r in range(1, 8)] == [0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1]
    assert annealed_alpha(0.2, 0.8, 3, 2) == pytest.approx(0.5)  # rising works too
    assert annealed_alpha(0.5, 0.0, 0, 9) == 0.5  # 0 = off
    with pytest.raises(ValueError, match="anneal_rounds must be 0"):
        annealed_alpha(0.5, 0.1, 1, 1)


def test_begin_round_sets_the_rounds_alpha_and_scales_the_hint_alike():
    torch.manual_seed(0)
    teacher = Teacher(DigitsTask(width=16).build_model(), "features")
    task = ShapedTask(DigitsTask(width=4), teacher=teacher, temperature=4.0, alpha=0.5, feature_weight=20.0,
                      alpha_end=0.1, anneal_rounds=5)
    student = task.build_model()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    losses = {}
    for server_round in (1, 9, 3):  # any order: each round's values come from the schedule, not the last round's
        task.begin_round(server_round)
        losses[server_round] = task.training_loss(student(x), y, x).item()
    assert (task.alpha, task.feature_weight) == (pytest.approx(0.3), pytest.approx(12.0))
    task.begin_round(9)
    assert (task.alpha, task.feature_weight) == (pytest.approx(0.1), pytest.approx(4.0))
    fixed = ShapedTask(DigitsTask(width=4), teacher=teacher, temperature=4.0, alpha=0.1, feature_weight=4.0)
    twin = fixed.build_model()
    twin.load_state_dict(student.state_dict())
    assert losses[9] == pytest.approx(fixed.training_loss(twin(x), y, x).item(), rel=1e-5)  # round 9 = constant alpha_end
    assert losses[1] != pytest.approx(losses[9])
    with pytest.raises(ValueError, match="anneal_rounds must be 0"):
        ShapedTask(DigitsTask(width=4), teacher=teacher, anneal_rounds=1)


def test_the_torch_trainer_tells_the_task_its_round_before_training():
    from fedge.client.torch_trainer import TorchTrainer
    from fedge.client.train_config import TrainConfig
    from fedge.tasks.base import Split

    task = ShapedTask(DigitsTask(width=4), teacher=Teacher(DigitsTask(width=8).build_model()), alpha=0.9,
                      alpha_end=0.0, anneal_rounds=4)
    trainer = TorchTrainer(task, seed=0)
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(8, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int64))
    trainer.train(data, TrainConfig(local_steps=1, batch_size=4), rng, server_round=3, frozen=set(), seed=0)
    assert task.alpha == pytest.approx(0.3)
    trainer.train(data, TrainConfig(local_steps=1, batch_size=4), rng, server_round=4, frozen=set(), seed=0)
    assert task.alpha == 0.0
