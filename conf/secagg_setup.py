"""From the ``secagg`` and ``compression`` config groups to :class:`SecAggSettings`.

Secure aggregation replaces the uplink codec with its own integer encoding, so the
compression group chooses its shape: ``fp32`` -> dense with ``secagg.value_bits``;
``uniform`` (``q8``, ``qsgd``, ...) -> dense with the codec's bits; ``randk`` -> the sparse
variant with the codec's ratio, bits from its ``values`` codec when that is ``q<b>``, and its
error feedback. Codecs whose output differs in shape from device to device cannot be
masked and are refused with the reason. :func:`secure_strategy` wraps a run's
CompressedStrategy the same way for ``fedge-sim`` (every backend) and ``fedge-server``;
:func:`secagg_sections` is what such a run adds to ``results.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from fedge.conf.build import ConfigError
from fedge.strategies import CompressedStrategy
from fedge.strategies.secagg.strategy import SecAggSettings, SecAggStrategy

_REFUSED = {
    "topk": "each device keeps its own largest coordinates, so masked vectors would not line up "
    "(use compression=randk: the same random coordinates on every device)",
    "sign": "1-bit signs leave no room for the masks' sums (use compression=q8 or qsgd)",
    "powersgd": "low-rank factors do not add up to the factors of the sum",
    "kmeans": "each device's codebook differs, so the sum of indices means nothing",
    "fp16": "masking needs integers; use compression=none (8 bits) or q8",
}


def secagg_settings(secagg: Mapping[str, Any], compression: Mapping[str, Any]) -> SecAggSettings:
    """The settings the two groups describe (``ValueError`` naming the key otherwise)."""
    codec = str(compression["codec"])
    bits = int(secagg["value_bits"])
    ratio = 0.0
    error_feedback = False
    short = re.fullmatch(r"q([1-8])s?", codec)
    if codec in _REFUSED:
        raise ValueError(f"compression.codec={codec} cannot run with secagg=on: {_REFUSED[codec]}")
    if short:
        bits = int(short.group(1))
    elif codec == "uniform":
        bits = int(compression["bits"])
    elif codec == "randk":
        ratio = float(compression["ratio"])
        values = re.fullmatch(r"q([1-8])s?", str(compression["values"]))
        bits = int(values.group(1)) if values else bits
        error_feedback = bool(compression["error_feedback"])
    elif codec != "fp32":
        raise ValueError(f"compression.codec={codec} cannot run with secagg=on (use none, q1..q8, uniform or randk)")
    return SecAggSettings(
        value_bits=bits,
        clip=float(secagg["clip"]),
        neighbours=int(secagg["neighbours"]),
        threshold=int(secagg["threshold"]),
        dropout=float(secagg["dropout"]),
        sparse_ratio=ratio,
        max_examples=float(secagg["max_examples"]),
        error_feedback=error_feedback,
    )


def secure_strategy(cfg: DictConfig, compressed: CompressedStrategy) -> CompressedStrategy | SecAggStrategy:
    """``compressed`` under secure aggregation with ``secagg=on`` (the server sees only sums)."""
    if not cfg.secagg.enabled:
        return compressed
    try:
        settings = secagg_settings(cfg.secagg, cfg.compression)
        return SecAggStrategy(compressed, settings, freeze=list(cfg.client.freeze), trainable=list(cfg.client.trainable))
    except ValueError as exc:
        raise ConfigError(f"secagg: {exc}") from None


def secagg_sections(strategy: object) -> dict[str, Any]:
    """``results.json`` entries of a securely aggregated run (``{"secagg": [...]}``), else none."""
    return {"secagg": strategy.results_section()} if isinstance(strategy, SecAggStrategy) else {}
