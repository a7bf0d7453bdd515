"""From the ``compression`` config group to the codec objects the server uses."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge.protos.codecs import CodecSpec, make_codec
from fedge.protos.codecs.base import resolve_alias
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.codecs.base import _REGISTRY  # noqa: PLC2701 - the codec classes by name


@dataclass(frozen=True)
class CompressionSetup:
    """Uplink plan and downlink settings for :class:`~fedge.strategies.CompressedStrategy`."""

    uplink: UplinkPlan
    downlink: CodecSpec
    downlink_delta: bool
    max_update_bytes: int


def codec_spec(name: str, settings: Mapping[str, object]) -> CodecSpec:
    """The spec for codec ``name`` with the parameters from ``settings`` that it takes."""
    spec = resolve_alias(CodecSpec(name))
    cls = _REGISTRY.get(spec.name)
    params = dict(spec.params)
    if cls is not None:
        for param in inspect.signature(cls.__init__).parameters:
            if param not in ("self", "seed") and param not in params and param in settings:
                params[param] = settings[param]  # type: ignore[assignment]
    return CodecSpec(spec.name, params)


def compression_setup(settings: Mapping[str, Any]) -> CompressionSetup:
    """Build and check the setup a ``compression`` config describes (raises ``ValueError``)."""
    uplink = codec_spec(settings["codec"], settings)
    make_codec(uplink)  # fail now, naming the codec, rather than on every device
    downlink = CodecSpec(settings["downlink"])
    make_codec(downlink)
    make_codec(settings["fallback"])
    plan = UplinkPlan(uplink, settings["error_feedback"], settings["dense_below"], settings["fallback"])
    return CompressionSetup(plan, downlink, settings["downlink_delta"], settings["max_update_bytes"])
