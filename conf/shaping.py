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

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from fedge.conf.build import ConfigError, instantiate_node
from fedge.conf.shape_settings import shaping_requested
from fedge.strategies.magnitude_pruning import MagnitudePruning, PruningSchedule
from fedge.strategies.structured_pruning import Reshaped, StructuredPruning
from fedge.tasks.base import FederatedTask
from fedge.tasks.shaping.architecture import to_json
from fedge.tasks.shaping.channel_pruning import ChannelPruner, ChannelPruningConfig
from fedge.tasks.shaping.checkpoint import load_checkpoint, transfer
from fedge.tasks.shaping.distillation import FeatureTap, Teacher
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
    channels: ChannelPruner | None = None  # structured pruning, if configured

    def wrap(self, strategy: Strategy) -> Strategy:
        """``strategy`` pruning on the schedule or by channels, if configured."""
        if self.channels is not None:
            return StructuredPruning(strategy, self._reshape)
        return MagnitudePruning(strategy, self.schedule) if self.schedule is not None else strategy

    def _reshape(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> Reshaped | None:
        assert self.channels is not None
        pruned = self.channels(server_round, arrays)
        return None if pruned is None else Reshaped(pruned.arrays, to_json(pruned.spec))

    @property
    def rebuild(self) -> Callable[[], torch.nn.Module] | None:
        """A fresh model of the current architecture (the central evaluator's, after structured pruning)."""
        return self.channels.model if self.channels is not None else None


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
    if distill.feature_weight <= 0:
        return Teacher(model)
    try:
        return Teacher(model, distill.feature_layer)
    except ValueError as exc:
        raise ValueError(f"shape.distill.feature_layer: the teacher ({exc})") from None


def _check_features(student: torch.nn.Module, teacher: Teacher, task: FederatedTask) -> None:
    """Refuse a feature layer the student lacks or whose attention map differs from the teacher's in H x W."""
    assert teacher.tap is not None
    tap = FeatureTap(teacher.tap.layer)
    try:
        tap.attach(student)
    except ValueError as exc:
        raise ValueError(f"shape.distill.feature_layer: the student ({exc})") from None
    _classes(student, task)  # one forward each fills the taps
    _classes(teacher.model, task)
    mine, theirs = tap.take(), teacher.features()
    if mine.dim() != 4 or theirs.dim() != 4 or mine.shape[2:] != theirs.shape[2:]:
        raise ValueError(f"shape.distill.feature_layer={tap.layer!r}: student output {tuple(mine.shape[1:])} and teacher "
                         f"output {tuple(theirs.shape[1:])} must both be (C, H, W) of the same H x W")


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
    channels = _channels(cfg, task)
    if channels is not None:
        report["structured"] = channels.report
    teacher = _teacher(cfg, task)
    if teacher is not None:
        student_classes = _classes(model, task)
        if student_classes != task.num_classes:
            raise ValueError(f"shape.distill: the student (task) model outputs {student_classes} classes, the task has {task.num_classes}")
        params = sum(p.numel() for p in model.parameters())
        teacher_params = sum(p.numel() for p in teacher.model.parameters())
        if teacher.tap is not None:
            _check_features(task.build_model(), teacher, task)
        report["distill"] = {"student_params": params, "teacher_params": teacher_params}
    shaped: FederatedTask = task  # nothing changes the model's structure or loss: the task as it is
    if ranks or schedule is not None or teacher is not None:
        d = cfg.shape.distill
        shaped = ShapedTask(task, ranks, schedule is not None, teacher, d.temperature, d.alpha, float(d.feature_weight),
                            float(d.alpha_end), int(d.anneal_rounds))
    return Shaping(shaped, model.state_dict(), trainable, schedule, report, channels)


#: Strategies whose server state is shaped like the model (momentum, moments): a pruned model would not fit it.
STATEFUL_STRATEGIES = ("FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")


def _channels(cfg: DictConfig, task: FederatedTask) -> ChannelPruner | None:
    node = cfg.shape.structured
    if not (node.ratio or node.layers):
        return None
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        raise ValueError("shape.structured needs torch-pruning: pip install 'fedge[shape]'") from None
    spec = task.model_spec()
    if spec is None:
        raise ValueError(f"shape.structured: task {task.name!r} declares no model_spec(); channel pruning needs a layer-spec model")
    for key, on in (("shape.lowrank", _lowrank_set(cfg)), ("shape.prune.sparsity", bool(cfg.shape.prune.sparsity)),
                    ("secagg", bool(cfg.secagg.enabled))):
        if on:
            raise ValueError(f"shape.structured with {key}: not supported together (one reshaping of the model per run)")
    target = str(cfg.strategy.get("_target_", "")).rsplit(".", 1)[-1]
    if target in STATEFUL_STRATEGIES:
        raise ValueError(f"shape.structured with strategy {target}: its server state is shaped like the model; use fedavg, fedprox or a robust aggregator")
    pruning = ChannelPruningConfig(
        float(node.ratio), [int(r) for r in node.rounds], str(node.importance),
        {str(k): float(v) for k, v in node.layers.items()}, [str(p) for p in node.ignore],
    )
    pruning.check(spec, int(cfg.rounds))
    return ChannelPruner(spec, pruning, task.input_shape)


def _lowrank_set(cfg: DictConfig) -> bool:
    node = cfg.shape.lowrank
    return bool(node.rank or node.energy or node.budget)


def shape_experiment(cfg: DictConfig, task: FederatedTask) -> Shaping:
    """The shaped task and initial model ``cfg.shape`` asks for; ``ConfigError`` names a bad key."""
    try:
        return _shape(cfg, task)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_shaping(cfg: DictConfig) -> None:
    """Refuse ``cfg.shape`` settings that cannot work for the task's model, before the run starts
    (builds the model, loads no data); the torch-free checks are :mod:`fedge.conf.shape_settings`."""
    if not shaping_requested(cfg):
        return
    task: FederatedTask = instantiate_node("task", cfg.task)  # type: ignore[assignment]
    shape_experiment(cfg, task)


def as_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
