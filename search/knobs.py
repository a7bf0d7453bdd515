"""The knobs a search may turn, their ranges, and the ``fedge-sim`` overrides each value becomes.

A knob is one idea of the model or its training (``width``, ``depth``, ``lr``, ...)
mapped to the Hydra overrides of the experiment config that set it, so a trial is the
same federation ``fedge-sim`` would run with those overrides. A range is either
``{choices: [...]}`` (categorical) or ``{low, high, log?, step?}`` (an int knob draws
integers, a float knob floats; ``log: true`` draws uniformly in log space, the usual
choice for learning rates). Tuning advice: keep categorical ranges short (3-6 values):
with tens of trials, NSGA-II and TPE learn little from knobs that have many values.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna


@dataclass(frozen=True)
class Knob:
    """One searchable setting: its value type and the overrides a value becomes."""

    kind: type  # int or float
    what: str  # what it sets, for error messages and --help
    overrides: Callable[[Any], list[str]]


def _set(key: str) -> Callable[[Any], list[str]]:
    return lambda value: [f"{key}={value}"]


def _checkpointing(segments: Any) -> list[str]:
    """0 trains without gradient checkpointing; N > 0 checkpoints the model in N sequential segments."""
    if segments == 0:
        return ["client.checkpointing=false"]
    return ["client.checkpointing=true", f"client.checkpoint_segments={segments}"]


def _shape(group: str, key: str) -> Callable[[Any], list[str]]:
    """0 leaves the model unshaped; any other value switches ``shape=<group>`` on with ``key=value``."""
    return lambda value: [] if value == 0 else [f"shape={group}", f"{key}={value}"]


#: Every knob fedge-search knows. ``width``, ``depth``, ``kernel`` need a task that takes
#: them (``har``: all three; ``digits``, ``image``: ``width``).
KNOBS: dict[str, Knob] = {
    "width": Knob(int, "task.width (channels of the first conv layer)", _set("task.width")),
    "depth": Knob(int, "task.depth (conv blocks)", _set("task.depth")),
    "kernel": Knob(int, "task.kernel (conv taps, odd)", _set("task.kernel")),
    "batch_size": Knob(int, "client.batch_size (examples per local step; training RAM grows with it)",
                       _set("client.batch_size")),
    "lr": Knob(float, "client.lr (the devices' SGD learning rate)", _set("client.lr")),
    "local_steps": Knob(int, "client.local_steps (optimiser steps per round)", _set("client.local_steps")),
    "qat_bits": Knob(int, "client.qat.bits (quantisation-aware training; 0 = off)", _set("client.qat.bits")),
    "momentum": Knob(float, "client.momentum (the devices' SGD momentum; 0 drops its state: one weight-sized "
                            "tensor less of training RAM)", _set("client.momentum")),
    "checkpoint_segments": Knob(int, "client.checkpointing + client.checkpoint_segments (gradient checkpointing "
                                     "in N sequential segments; 0 = off; trades a forward pass for activation RAM)",
                                _checkpointing),
    "prune_ratio": Knob(float, "shape=structured shape.structured.ratio (channels pruned; 0 = no pruning)",
                        _shape("structured", "shape.structured.ratio")),
    "rank_budget": Knob(float, "shape=lowrank shape.lowrank.budget (SVD factorisation's parameter share; 0 = none)",
                        _shape("lowrank", "shape.lowrank.budget")),
}

#: Knobs that set the same config group: one search may use only one of each set.
EXCLUSIVE = (("prune_ratio", "rank_budget"),)


class SearchConfigError(ValueError):
    """A search configuration fedge-search refuses; the message starts with the key."""


@dataclass(frozen=True)
class KnobRange:
    """The values one knob may take: ``choices``, or ``low``..``high`` (``log``, ``step``)."""

    name: str
    kind: type
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        """This knob's value for ``trial``."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The extreme values (checked against the config before any trial runs)."""
        if self.choices:
            return list(self.choices)
        return [self.kind(self.low), self.kind(self.high)]

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


def _number(key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise SearchConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def knob_range(name: str, spec: Any) -> KnobRange:
    """``space.<name>``'s range, checked; the error names the key."""
    key = f"space.{name}"
    if name not in KNOBS:
        close = difflib.get_close_matches(name, KNOBS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SearchConfigError(f"{key}: unknown knob{hint}; knobs: {', '.join(KNOBS)}")
    kind = KNOBS[name].kind
    if not isinstance(spec, Mapping):
        raise SearchConfigError(f"{key}: expected {{choices: [...]}} or {{low: .., high: ..}}, got {spec!r}")
    unknown = set(spec) - {"choices", "low", "high", "log", "step"}
    if unknown:
        raise SearchConfigError(f"{key}.{sorted(unknown)[0]}: unknown field; fields: choices, low, high, log, step")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise SearchConfigError(f"{key}: choices and low/high/log/step exclude each other")
        choices = spec["choices"]
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__") or not list(choices):
            raise SearchConfigError(f"{key}.choices: expected a non-empty list, got {choices!r}")
        values = tuple(_number(f"{key}.choices", v, kind) for v in choices)
        if len(set(values)) != len(values):
            raise SearchConfigError(f"{key}.choices: repeated values {list(values)}")
        return KnobRange(name, kind, choices=values)
    if "low" not in spec or "high" not in spec:
        raise SearchConfigError(f"{key}: needs choices, or both low and high")
    low, high = _number(f"{key}.low", spec["low"], kind), _number(f"{key}.high", spec["high"], kind)
    if not low < high:
        raise SearchConfigError(f"{key}: low must be < high, got low={low} high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchConfigError(f"{key}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise SearchConfigError(f"{key}.low: must be > 0 with log: true, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{key}.step", step, kind)
        if step <= 0:
            raise SearchConfigError(f"{key}.step: must be > 0, got {step}")
        if log:
            raise SearchConfigError(f"{key}: step and log: true exclude each other (optuna draws one or the other)")
    return KnobRange(name, kind, low=low, high=high, log=log, step=step)


def search_space(space: Mapping[str, Any]) -> dict[str, KnobRange]:
    """``space`` (knob -> range) checked: known knobs, sound ranges, not empty, no two knobs on one group."""
    if not isinstance(space, Mapping):
        raise SearchConfigError(f"space: expected knob: range pairs, got {space!r}")
    if not space:
        raise SearchConfigError(f"space: empty; name at least one knob ({', '.join(KNOBS)})")
    ranges = {str(name): knob_range(str(name), spec) for name, spec in space.items()}
    for group in EXCLUSIVE:
        both = [k for k in group if k in ranges]
        if len(both) > 1:
            raise SearchConfigError(f"space.{both[1]}: cannot be searched together with space.{both[0]} "
                                    "(both set the shape group)")
    return ranges


def overrides_for(values: Mapping[str, Any]) -> list[str]:
    """The fedge-sim overrides a trial's knob values become."""
    return [o for name, value in values.items() for o in KNOBS[name].overrides(value)]
