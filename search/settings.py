"""A search's settings (``conf/search/<name>.yaml``), checked before any trial runs.

Keys (all checked; an unknown one is refused with the closest known name):

* ``profile``: the device profile whose budget the model must fit
  (``conf/device/profile/<profile>.yaml``); ``budget.<limit>`` overrides one of its
  numbers (``flash_kb``, ``train_ram_kb``, ``latency_ms``, ``int8_macs_per_s``).
* ``objective``: the second objective beside final accuracy (maximised): ``int8_kb``
  (the int8 ONNX file) or ``latency_ms`` (the device latency estimate), minimised.
* ``trials``, ``sampler`` (``nsga2``: NSGA-II, ``population`` trials a generation;
  ``tpe``: multi-objective TPE, ``population`` random trials first), ``seed``.
* ``federation``: the ``fedge-sim`` config every trial shares, as a nested mapping
  (``{task: har, rounds: 12, client: {local_steps: 40}}`` = ``task=har rounds=12
  client.local_steps=40``).
* ``space``: knob -> range (:mod:`fedge.search.knobs`); ``enqueue``: knob settings
  tried first (e.g. the task's default model, so the search starts from it).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedge.conf.cli import CONF_DIR
from fedge.search.knobs import KnobRange, SearchConfigError, search_space

SEARCH_DIR = CONF_DIR / "search"
SAMPLERS = ("nsga2", "tpe")
OBJECTIVES = ("int8_kb", "latency_ms")


@dataclass
class SearchSettings:
    """The checked settings of one search (see the module docstring for each key)."""

    profile: str = "wearable"
    budget: dict[str, float | None] = field(default_factory=dict)
    objective: str = "int8_kb"
    trials: int = 24
    sampler: str = "nsga2"
    population: int = 8
    seed: int = 0
    latency_samples: int = 50  # batch-1 ONNX Runtime runs timed per exported model
    federation: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    name: str = "search"

    def ranges(self) -> dict[str, KnobRange]:
        return search_space(self.space)

    def federation_overrides(self) -> list[str]:
        """``federation`` as fedge-sim overrides (``key.sub=value``)."""
        return list(_flatten(self.federation, ""))


def _flatten(node: Mapping[str, Any], prefix: str):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{path}.")
        elif isinstance(value, (list, tuple)):
            yield f"{path}=[{','.join(str(v) for v in value)}]"
        else:
            yield f"{path}={'null' if value is None else value}"


def _int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SearchConfigError(f"{key}: must be an integer >= {low}, got {value!r}")
    return value


def check(settings: SearchSettings) -> SearchSettings:
    """Refuse settings no search can run; every message starts with the key."""
    _int("trials", settings.trials, 1)
    _int("population", settings.population, 2)
    _int("seed", settings.seed, 0)
    _int("latency_samples", settings.latency_samples, 1)
    if settings.sampler not in SAMPLERS:
        raise SearchConfigError(f"sampler: must be one of {', '.join(SAMPLERS)}, got {settings.sampler!r}")
    if settings.objective not in OBJECTIVES:
        raise SearchConfigError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {settings.objective!r}")
    if not isinstance(settings.federation, Mapping) or not settings.federation:
        raise SearchConfigError("federation: must name the trials' fedge-sim config, e.g. {task: har, rounds: 10}")
    ranges = settings.ranges()
    for i, point in enumerate(settings.enqueue):
        if not isinstance(point, Mapping):
            raise SearchConfigError(f"enqueue[{i}]: expected knob: value pairs, got {point!r}")
        for name, value in point.items():
            if name not in ranges:
                raise SearchConfigError(f"enqueue[{i}].{name}: not a knob of space ({', '.join(ranges)})")
            if not ranges[name].contains(value):
                raise SearchConfigError(f"enqueue[{i}].{name}: {value!r} is outside space.{name}")
    return settings


def load_settings(config: str | Path, overrides: Sequence[str] = ()) -> SearchSettings:
    """``conf/search/<config>.yaml`` (or a YAML file path) with ``key=value`` overrides, checked."""
    path = Path(config)
    if not path.suffix:
        path = SEARCH_DIR / f"{config}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SEARCH_DIR.glob("*.yaml")))
        raise SearchConfigError(f"config: no search config {str(config)!r} (conf/search/: {names})")
    try:
        node = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
        raw = OmegaConf.to_container(node, resolve=True)
    except (OmegaConfBaseException, ValueError) as exc:
        raise SearchConfigError(f"{path.name}: {exc}") from None
    assert isinstance(raw, dict)
    known = [f.name for f in fields(SearchSettings)]
    values = {str(k): v for k, v in raw.items()}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise SearchConfigError(f"{key}: unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                    f"keys: {', '.join(known)}")
    values.setdefault("name", path.stem)
    return check(SearchSettings(**values))
