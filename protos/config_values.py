"""Round configuration on the wire: Python scalars <-> ``ConfigValue`` protos.

Mirrors the scalar part of Flower's ConfigRecord (int, float, bool, str, bytes), so a
server's ConfigRecord reaches a device that has no flwr installed.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from fedge.protos.v1 import task_pb2 as pb

ConfigScalar = int | float | bool | str | bytes


def to_wire(config: Mapping[str, object], out: MutableMapping[str, pb.ConfigValue]) -> None:
    """Write ``config`` into a proto map field; ``TypeError`` names a value it cannot carry."""
    for key, value in config.items():
        entry = out[key]
        if isinstance(value, bool):  # before int: bool is an int subclass
            entry.bool_value = value
        elif isinstance(value, int):
            entry.int_value = value
        elif isinstance(value, float):
            entry.float_value = value
        elif isinstance(value, str):
            entry.string_value = value
        elif isinstance(value, bytes):
            entry.bytes_value = value
        else:
            raise TypeError(
                f"config key {key!r}: {type(value).__name__} values cannot be sent to devices "
                "(use int, float, bool, str or bytes)"
            )


def from_wire(config: Mapping[str, pb.ConfigValue]) -> dict[str, ConfigScalar]:
    """Read a proto map field back into Python scalars (unset values are skipped)."""
    out: dict[str, ConfigScalar] = {}
    for key, entry in config.items():
        which = entry.WhichOneof("value")
        if which is not None:
            out[key] = getattr(entry, which)
    return out
