"""The ``shape`` group's settings checked without torch: ranges, files, combinations.

:func:`check_shape_settings` runs for every configuration (``shape=none`` included, so a
stray ``shape.init.path`` is refused too) before Hydra starts a job, and imports no torch:
a mistyped path or an out-of-range knob is answered in the time the CLI takes to parse.
The checks that need the model (a rank above a layer's, channels pruned to zero, a
teacher of other classes) follow in :func:`fedge.conf.shaping.check_shaping` when
:func:`shaping_requested` says something is set.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fedge.conf.build import ConfigError


def shaping_requested(cfg: DictConfig) -> bool:
    """Whether any ``shape.*`` setting changes the run (whatever ``shape.name`` says)."""
    s = cfg.get("shape")
    if s is None:
        return False
    return bool(
        s.name != "none" or s.init.path or s.lowrank.rank or s.lowrank.energy or s.lowrank.budget or s.prune.sparsity
        or s.distill.teacher_path or s.structured.ratio or s.structured.layers
    )


def _file(key: str, path: str) -> None:
    if path and not Path(path).is_file():
        raise ConfigError(f"{key}={path!r}: no such file")


def check_shape_settings(cfg: DictConfig) -> None:
    """Refuse ``shape.*`` values no run can use, naming the key (``ConfigError``); no torch."""
    s = cfg.get("shape")
    if s is None:
        return
    _file("shape.init.path", s.init.path)
    _file("shape.distill.teacher_path", s.distill.teacher_path)
    if s.init.freeze_backbone and not s.init.path:
        raise ConfigError("shape.init.freeze_backbone needs shape.init.path (the checkpoint whose tensors are frozen)")
    if s.prune.sparsity and not 0 < s.prune.sparsity < 1:
        raise ConfigError(f"shape.prune.sparsity must be in (0, 1), got {s.prune.sparsity}")
    if s.distill.teacher_path and (s.distill.temperature <= 0 or not 0 <= s.distill.alpha <= 1):
        raise ConfigError(
            f"shape.distill.temperature must be > 0 and alpha in [0, 1], got {s.distill.temperature}, {s.distill.alpha}"
        )
    if s.distill.teacher_path and s.distill.feature_weight < 0:
        raise ConfigError(f"shape.distill.feature_weight must be >= 0, got {s.distill.feature_weight}")
    if s.distill.teacher_path and (s.distill.anneal_rounds < 0 or s.distill.anneal_rounds == 1):
        raise ConfigError(f"shape.distill.anneal_rounds must be 0 (off) or >= 2, got {s.distill.anneal_rounds}")
    if s.distill.teacher_path and s.distill.anneal_rounds and not 0 <= s.distill.alpha_end <= 1:
        raise ConfigError(f"shape.distill.alpha_end must be in [0, 1], got {s.distill.alpha_end}")
    if s.distill.teacher_path and s.distill.feature_weight > 0 and not s.distill.feature_layer:
        raise ConfigError("shape.distill.feature_layer: name the module whose features to match (e.g. features)")
    node = s.structured
    if node.ratio and not 0 < node.ratio < 1:
        raise ConfigError(f"shape.structured.ratio must be in (0, 1), got {node.ratio}")
    for name, ratio in node.layers.items():
        if not 0 <= ratio < 1:
            raise ConfigError(f"shape.structured.layers.{name}={ratio} must be in [0, 1) (1 prunes the layer to zero channels)")
    if (node.ratio or node.layers) and not node.rounds:
        raise ConfigError("shape.structured.rounds: give the rounds to prune at, e.g. [3, 6]")


def check_served_shape(cfg: DictConfig) -> None:
    """Refuse, for ``fedge-server`` (real devices over gRPC), the ``shape.*`` settings whose
    device side exists only in ``fedge-sim``, naming the key (``ConfigError``); no torch.

    Served: ``shape.structured`` (the pruned architecture travels in every Task and
    ``fedge-client`` rebuilds it) and ``shape.init`` (a starting checkpoint; a frozen
    backbone's ``client.trainable`` travels in the round's instructions). Simulation-only:
    ``shape.lowrank`` (a device builds the task's unfactorised model: the factorised
    architecture does not travel), ``shape.prune`` (the mask does not travel: a device
    would train the zeros back), ``shape.distill`` (the teacher would have to reach the
    devices; ``fedge-client`` has none). ``server.resume`` of a structured run is refused
    too: the checkpoint does not hold the pruner's architecture.
    """
    s = cfg.get("shape")
    if s is None:
        return
    why = "is simulation-only (fedge-sim); fedge-server serves shape=structured and shape.init"
    if s.lowrank.rank or s.lowrank.energy or s.lowrank.budget:
        raise ConfigError(f"shape.lowrank {why}: fedge-client devices build the task's unfactorised model (the factorised architecture does not travel)")
    if s.prune.sparsity:
        raise ConfigError(f"shape.prune.sparsity {why}: the pruning mask does not travel, fedge-client devices would train the zeros back")
    if s.distill.teacher_path:
        raise ConfigError(f"shape.distill.teacher_path {why}: the teacher would have to reach the devices, and fedge-client has none")
    if (s.structured.ratio or s.structured.layers) and cfg.server.resume:
        raise ConfigError("server.resume with shape.structured: a checkpoint does not hold the pruned architecture; start the run again")
