"""The ``shape`` config group applied to an experiment: transfer, factorise, prune, distil.

:func:`check_shaping` refuses bad settings before a run starts (the CLI calls it through
``check_experiment``), naming the key; :func:`shape_experiment` turns the task into a
:class:`~fedge.tasks.shaping.shaped_task.ShapedTask` and gives the run's initial model,
its frozen tensors and a report (``results.json`` section ``shape``: factorised ranks, so
``fedge-export`` rebuilds the architecture). Order: the checkpoint is loaded into the
task's model, then factorised (SVD of the trained weights), then pruned on the schedule
by :class:`~fedge.strategies.magnitude_pruning.MagnitudePruning` during the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from fedge.conf.build import ConfigError, instantiate_node
from fedge.strategies.magnitude_pruning import MagnitudePruning, PruningSchedule
from fedge.tasks.base import FederatedTask
from fedge.tasks.shaping.checkpoint import load_checkpoint, transfer
from fedge.tasks.shaping.distillation import Teacher
from fedge.tasks.shaping.lowrank import LowRankConfig, factorise
from fedge.tasks.shaping.shaped_task import ShapedTask


@dataclass
class Shaping:
    """A shaped experiment: its task, initial weights, tensors to train (``[]`` = all) and report."""

    task: FederatedTask
    initial: dict[str, torch.Tensor]
    trainable: list[str] = field(default_factory=list)
    schedule: PruningSchedule | None = None
    report: dict[str, object] = field(default_factory=dict)

    def wrap(self, strategy: Strategy) -> Strategy:
        """``strategy`` pruning on the schedule, if one is configured."""
        return MagnitudePruning(strategy, self.schedule) if self.schedule is not None else strategy


def _lowrank(cfg: DictConfig) -> LowRankConfig | None:
    node = cfg.shape.lowrank
    if not (node.rank or node.energy or node.budget):
        return None
    lowrank = LowRankConfig(node.rank, node.energy, node.budget, list(node.layers), list(node.skip))
    lowrank.check()
    return lowrank


def _teacher(cfg: DictConfig, task: FederatedTask) -> Teacher | None:
    distill = cfg.shape.distill
    if not distill.teacher_path:
        return None
    if not distill.teacher_to_devices:
        raise ValueError(
            "shape.distill.teacher_to_devices must be true: soft targets of the devices' own data need the "
            "teacher on the devices (it is sent to them with the task)"
        )
    if distill.temperature <= 0 or not 0 <= distill.alpha <= 1:
        raise ValueError(f"shape.distill.temperature must be > 0 and alpha in [0, 1], got {distill.temperature}, {distill.alpha}")
    node = OmegaConf.merge(cfg.task, distill.teacher_task)
    teacher_task: FederatedTask = instantiate_node("shape.distill.teacher_task", node)  # type: ignore[assignment, arg-type]
    torch.manual_seed(cfg.seed)
    model = teacher_task.build_model()
    done = transfer(model, load_checkpoint(distill.teacher_path, "shape.distill.teacher_path"), "shape.distill.teacher_path")
    if done.fresh:
        raise ValueError(f"shape.distill.teacher_path does not fit shape.distill.teacher_task's model: {done.fresh} missing or of another shape")
    classes = _classes(model, task)
    if classes != task.num_classes:
        raise ValueError(f"shape.distill: the teacher outputs {classes} classes, the task has {task.num_classes}")
    return Teacher(model)


def _classes(model: torch.nn.Module, task: FederatedTask) -> int:
    shape = getattr(task, "input_shape", None)
    if shape is None:
        raise ValueError(f"task {task.name!r} has no input_shape to probe its model's classes with")
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, *shape)).shape[1])


def _shape(cfg: DictConfig, task: FederatedTask) -> Shaping:
    """:func:`shape_experiment` raising ``ValueError``."""
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    report: dict[str, object] = {}
    trainable: list[str] = []
    if cfg.shape.init.path:
        done = transfer(model, load_checkpoint(cfg.shape.init.path))
        report["init"] = {"path": cfg.shape.init.path, "copied": len(done.copied), "fresh": done.fresh}
        if cfg.shape.init.freeze_backbone:
            if not done.fresh:
                raise ValueError("shape.init.freeze_backbone: the checkpoint fills every tensor, nothing would train")
            trainable = done.fresh
    ranks: dict[str, int] = {}
    lowrank = _lowrank(cfg)
    if lowrank is not None:
        if trainable:
            raise ValueError("shape.lowrank with shape.init.freeze_backbone: factorise first, then freeze (not both in one run)")
        layers = factorise(model, lowrank)
        ranks = {layer.name: layer.rank for layer in layers}
        report["lowrank"] = [asdict(layer) for layer in layers]
    schedule = None
    if cfg.shape.prune.sparsity:
        p = cfg.shape.prune
        schedule = PruningSchedule(p.sparsity, p.start_round, p.end_round, p.every)
        report["prune"] = asdict(schedule)
    teacher = _teacher(cfg, task)
    if teacher is not None:
        student_classes = _classes(model, task)
        if student_classes != task.num_classes:
            raise ValueError(f"shape.distill: the student (task) model outputs {student_classes} classes, the task has {task.num_classes}")
        params = sum(p.numel() for p in model.parameters())
        teacher_params = sum(p.numel() for p in teacher.model.parameters())
        report["distill"] = {"student_params": params, "teacher_params": teacher_params}
    shaped: FederatedTask = task  # nothing changes the model's structure or loss: the task as it is
    if ranks or schedule is not None or teacher is not None:
        shaped = ShapedTask(task, ranks, schedule is not None, teacher, cfg.shape.distill.temperature, cfg.shape.distill.alpha)
    return Shaping(shaped, model.state_dict(), trainable, schedule, report)


def shape_experiment(cfg: DictConfig, task: FederatedTask) -> Shaping:
    """The shaped task and initial model ``cfg.shape`` asks for; ``ConfigError`` names a bad key."""
    try:
        return _shape(cfg, task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_shaping(cfg: DictConfig) -> None:
    """Refuse ``cfg.shape`` settings that cannot work, before the run starts (builds the model, loads no data)."""
    if cfg.get("shape") is None or cfg.shape.name == "none" and not _any(cfg):
        return
    task: FederatedTask = instantiate_node("task", cfg.task)  # type: ignore[assignment]
    shape_experiment(cfg, task)


def _any(cfg: DictConfig) -> bool:
    s = cfg.shape
    return bool(s.init.path or s.lowrank.rank or s.lowrank.energy or s.lowrank.budget or s.prune.sparsity or s.distill.teacher_path)


def as_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
