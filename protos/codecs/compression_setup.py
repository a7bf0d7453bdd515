"""From compression settings (the keys of the ``compression`` config group) to codec specs.

Plain mappings in, checked codec specs out: the Hydra layer (:mod:`fedge.conf.build`)
hands the composed ``compression`` node here, and the server asks
:func:`required_codecs` which codecs a device must support to join.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedge.protos.codecs.base import CodecSpec, codec_parameters, make_codec, resolve_alias
from fedge.protos.codecs.plan import UplinkPlan


@dataclass(frozen=True)
class CompressionSetup:
    """Uplink plan and downlink settings for :class:`~fedge.strategies.CompressedStrategy`."""

    uplink: UplinkPlan
    downlink: CodecSpec
    downlink_delta: bool
    max_update_bytes: int  # largest accepted serialised Update, bytes


def codec_spec(name: str, settings: Mapping[str, object]) -> CodecSpec:
    """The spec for codec ``name`` with the parameters from ``settings`` that it takes."""
    spec = resolve_alias(CodecSpec(name))
    params = dict(spec.params)
    for param in codec_parameters(spec.name):
        if param not in params and param in settings:
            value = settings[param]
            if not isinstance(value, (int, float, str, bool)):
                raise ValueError(f"compression.{param} must be a number, string or bool, got {value!r}")
            params[param] = value
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


def required_codecs(uplink: UplinkPlan, downlink: CodecSpec) -> list[str]:
    """Codec ids a device must support to take part (uplink, its fallback, downlink), aliases
    resolved to the registered codec a device declares (``q8`` -> ``uniform``)."""
    specs = (uplink.codec, CodecSpec(uplink.fallback), downlink)
    return sorted({resolve_alias(spec).name for spec in specs})
