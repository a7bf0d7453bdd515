"""A strategy's state between rounds, as plain data that survives a restart.

Flower strategies keep their state in instance attributes: FedOpt's ``m_t``/``v_t``
and ``current_arrays``, FedAvgM's ``momentum_vector``, the adaptive-clipping
wrapper's ``clipping_norm``, ... and wrappers hold the strategy they wrap in an
attribute. :func:`capture` walks that tree and takes every attribute holding data
(numbers, strings, numpy arrays, lists/dicts of arrays, ArrayRecords); constructor
objects such as aggregation functions are left alone (they are rebuilt from the
config). :func:`restore` puts the values back into a freshly built strategy of the
same configuration. Flower has no strategy serialisation of its own, so this is
written here; arrays travel as numpy (no pickle).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy

log = logging.getLogger(__name__)

Scalar = (bool, int, float, str, type(None))


def capture(strategy: Strategy) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(description, arrays)``: a JSON-able description and the arrays it refers to."""
    arrays: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    description = _capture_object(strategy, "strategy", arrays, skipped)
    if skipped:
        log.debug("strategy attributes not checkpointed (not data): %s", skipped)
    return description, arrays


def restore(strategy: Strategy, description: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Set the captured attributes on ``strategy`` (built with the same configuration)."""
    _restore_object(strategy, description, arrays, "strategy")


def _capture_object(obj: object, path: str, arrays: dict[str, np.ndarray], skipped: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", "attributes": {}}
    for name, value in vars(obj).items():
        where = f"{path}.{name}"
        if isinstance(value, Strategy):
            out["attributes"][name] = {"kind": "strategy", "value": _capture_object(value, where, arrays, skipped)}
            continue
        encoded = _encode(value, where, arrays)
        if encoded is None:
            skipped.append(where)
        else:
            out["attributes"][name] = encoded
    return out


def _encode(value: object, where: str, arrays: dict[str, np.ndarray]) -> dict[str, Any] | None:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Scalar):
        if isinstance(value, float) and not np.isfinite(value):
            return {"kind": "float", "value": repr(value)}
        return {"kind": "scalar", "value": value}
    if isinstance(value, np.ndarray):
        arrays[where] = value
        return {"kind": "array"}
    if isinstance(value, ArrayRecord):
        keys = list(value.keys())
        for i, key in enumerate(keys):
            arrays[f"{where}[{i}]"] = value[key].numpy()
        return {"kind": "array_record", "keys": keys}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value) and all(
        isinstance(v, np.ndarray) for v in value.values()
    ):
        keys = list(value.keys())
        for i, key in enumerate(keys):
            arrays[f"{where}[{i}]"] = value[key]
        return {"kind": "array_dict", "keys": keys}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        for i, item in enumerate(value):
            arrays[f"{where}[{i}]"] = item
        return {"kind": "array_list", "length": len(value)}
    if isinstance(value, (list, tuple)) and all(isinstance(v, Scalar) for v in value):
        return {"kind": "scalar_list", "value": list(value)}
    if isinstance(value, (set, frozenset)) and all(isinstance(v, Scalar) for v in value):
        return {"kind": "scalar_set", "value": sorted(value, key=repr)}
    return None


def _restore_object(obj: object, description: Mapping[str, Any], arrays: Mapping[str, np.ndarray], path: str) -> None:
    expected = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if description["type"] != expected:
        raise ValueError(f"checkpoint holds a {description['type']} at {path}, the configuration builds a {expected}")
    for name, entry in description["attributes"].items():
        where = f"{path}.{name}"
        kind = entry["kind"]
        if kind == "strategy":
            _restore_object(getattr(obj, name), entry["value"], arrays, where)
            continue
        if kind == "scalar":
            value: object = entry["value"]
        elif kind == "float":
            value = float(entry["value"])
        elif kind == "scalar_list":
            value = list(entry["value"])
        elif kind == "scalar_set":
            value = set(entry["value"])
        elif kind == "array":
            value = np.array(arrays[where])
        elif kind == "array_record":
            value = ArrayRecord({k: Array(np.array(arrays[f"{where}[{i}]"])) for i, k in enumerate(entry["keys"])})
        elif kind == "array_dict":
            value = {k: np.array(arrays[f"{where}[{i}]"]) for i, k in enumerate(entry["keys"])}
        elif kind == "array_list":
            value = [np.array(arrays[f"{where}[{i}]"]) for i in range(entry["length"])]
        else:
            raise ValueError(f"checkpoint entry {where} has unknown kind {kind!r}")
        setattr(obj, name, value)
