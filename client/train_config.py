"""Local training hyperparameters, read from a round's config with device defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace

#: Config key Flower's FedProx strategy injects for the proximal term's weight.
FLOWER_PROX_KEY = "proximal-mu"
#: Training runtimes of a device (fedge.client.trainer).
RUNTIMES = ("torch", "numpy")
#: Field metadata of device settings that never travel in a round config.
DEVICE_ONLY = {"device_only": True}


@dataclass
class QATConfig:
    """Quantisation-aware training (LSQ, :mod:`fedge.client.qat`); ``bits=0`` is off.

    ``bits``: weight bits (8 or 4); ``act_bits``: activation bits; from round
    ``start_round`` on (before it, float training).
    """

    bits: int = 0
    act_bits: int = 8
    start_round: int = 1

    def __post_init__(self) -> None:
        if self.bits != 0 and not 2 <= self.bits <= 8:
            raise ValueError(f"qat.bits must be 0 (off) or in [2, 8], got {self.bits}")
        if not 2 <= self.act_bits <= 8:
            raise ValueError(f"qat.act_bits must be in [2, 8], got {self.act_bits}")
        if self.start_round < 1:
            raise ValueError(f"qat.start_round must be >= 1, got {self.start_round}")


@dataclass
class TrainConfig:
    """Mini-batch SGD settings for one round of local training.

    ``local_steps > 0`` runs that many mini-batch steps; otherwise ``local_epochs``
    full passes over the local data. This dataclass is also the Hydra schema of the
    ``client`` config group, so ``client.lr=abc`` fails type checking there.
    """

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    local_epochs: int = 1
    local_steps: int = 0
    prox_mu: float = 0.0
    l1: float = 0.0  # L1 penalty weight on trainable weights (weight_decay is the L2 penalty)
    checkpointing: bool = False  # gradient checkpointing of the model's sequential segments
    checkpoint_segments: int = 2
    freeze: list[str] = field(default_factory=list)  # state names (fnmatch patterns) kept fixed and not sent
    trainable: list[str] = field(default_factory=list)  # if set, every other tensor is frozen
    qat: QATConfig = field(default_factory=QATConfig)
    memory_mb: float = 0.0  # device memory budget for training (client.budget); 0 = no limit
    # The device's training runtime, torch or numpy (fedge.client.trainer); a device's own, never a round setting.
    runtime: str = field(default="torch", metadata=DEVICE_ONLY)
    # Simulation: shares of the fleet on other runtimes, e.g. {numpy: 0.5}; the rest run `runtime`.
    runtime_mix: dict[str, float] = field(default_factory=dict, metadata=DEVICE_ONLY)

    def __post_init__(self) -> None:
        self.freeze, self.trainable = list(self.freeze), list(self.trainable)
        if isinstance(self.qat, Mapping):
            self.qat = QATConfig(**self.qat)
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.local_epochs < 1 and self.local_steps < 1:
            problems.append("one of local_epochs or local_steps must be >= 1")
        if self.local_steps < 0:
            problems.append(f"local_steps must be >= 0, got {self.local_steps}")
        if self.prox_mu < 0:
            problems.append(f"prox_mu must be >= 0, got {self.prox_mu}")
        if self.l1 < 0:
            problems.append(f"l1 must be >= 0, got {self.l1}")
        if self.checkpoint_segments < 1:
            problems.append(f"checkpoint_segments must be >= 1, got {self.checkpoint_segments}")
        self.runtime_mix = dict(self.runtime_mix)
        for name in (self.runtime, *self.runtime_mix):
            if name not in RUNTIMES:
                problems.append(f"runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
        if any(not 0 <= share <= 1 for share in self.runtime_mix.values()) or sum(self.runtime_mix.values()) > 1 + 1e-9:
            problems.append(f"runtime_mix shares must be in [0, 1] and sum to at most 1, got {self.runtime_mix}")
        if problems:
            raise ValueError("bad training config: " + "; ".join(problems))

    def updated_from(self, config: Mapping[str, object], prefix: str = "client.") -> TrainConfig:
        """These defaults overridden by ``client.<field>`` keys of a round config.

        Flower's ``proximal-mu`` (set by FedProx) sets ``prox_mu``.
        """
        changes: dict[str, object] = {}
        for f in fields(self):
            if f.metadata.get("device_only"):
                continue
            key = prefix + f.name
            if is_dataclass(getattr(self, f.name)):  # nested: flat keys client.qat.bits, ...
                changes[f.name] = _nested_from(getattr(self, f.name), config, key + ".")
            elif key in config:
                changes[f.name] = _coerce(key, config[key], type(getattr(self, f.name)))
        if FLOWER_PROX_KEY in config:
            changes["prox_mu"] = _coerce(FLOWER_PROX_KEY, config[FLOWER_PROX_KEY], float)
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_config(self, prefix: str = "client.") -> dict[str, int | float | bool | str]:
        """This config as flat round-config entries (lists as comma-separated strings)."""
        out: dict[str, int | float | bool | str] = {}
        for f in fields(self):
            if f.metadata.get("device_only"):
                continue
            value = getattr(self, f.name)
            if is_dataclass(value):
                out.update({f"{prefix}{f.name}.{g.name}": getattr(value, g.name) for g in fields(value)})
            else:
                out[prefix + f.name] = _to_wire(value)
        return out


def _nested_from(value: object, config: Mapping[str, object], prefix: str) -> object:
    changes = {
        g.name: _coerce(prefix + g.name, config[prefix + g.name], type(getattr(value, g.name)))
        for g in fields(value)  # type: ignore[arg-type]
        if prefix + g.name in config
    }
    return replace(value, **changes)  # type: ignore[type-var]


def _to_wire(value: object) -> int | float | bool | str:
    return ",".join(value) if isinstance(value, list) else value  # type: ignore[return-value]


def _coerce(key: str, value: object, kind: type) -> int | float | bool | list[str]:
    if kind is list:
        if not isinstance(value, str):
            raise ValueError(f"config key {key!r} must be a comma-separated string, got {value!r}")
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be a bool, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config key {key!r} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"config key {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)
