"""A round config's training settings for a device, parsed once per process and config.

Every client of a simulation worker is sent the same round config. Turning it into the
device's :class:`~fedge.client.train_config.TrainConfig` (``TrainConfig.updated_from``:
a walk over the dataclass's fields and a ``replace``) and its
:class:`~fedge.protos.codecs.plan.UplinkPlan` cost ~30-70 us per client-round, the same
result for every client of the round. :func:`round_settings` computes it once per
(defaults, config) and hands the same objects to every client (a real device parses its
one config a round, as before). The results are shared: callers change them only
through ``dataclasses.replace``, as every fedge caller does.

Written by hand: ``functools.lru_cache`` needs hashable arguments, and a
``TrainConfig`` is not (it holds lists); the key is the defaults' identity plus the
config's entries with their types (``1``, ``1.0`` and ``True`` are equal in Python but
not the same setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedge.client.train_config import TrainConfig
from fedge.protos.codecs.plan import UplinkPlan

#: Distinct (defaults, config) pairs remembered; past this the memo starts again. A
#: process sees one config a round per defaults object, so a handful is plenty.
MAX_ENTRIES = 16


@dataclass(frozen=True)
class RoundSettings:
    """What a round config sets for training: the device's TrainConfig and uplink plan."""

    train: TrainConfig
    plan: UplinkPlan


_memo: dict[tuple[int, frozenset[tuple[str, type, object]]], tuple[TrainConfig, RoundSettings]] = {}


def round_settings(defaults: TrainConfig, config: Mapping[str, object]) -> RoundSettings:
    """``RoundSettings(defaults.updated_from(config), UplinkPlan.from_config(config))``,
    computed once per ``defaults`` object and config contents. A config the parsers
    refuse raises every time (nothing is remembered for it)."""
    key = (id(defaults), frozenset((k, type(v), v) for k, v in config.items()))
    hit = _memo.get(key)
    if hit is not None and hit[0] is defaults:  # the same object, not one at a recycled address
        return hit[1]
    settings = RoundSettings(defaults.updated_from(config), UplinkPlan.from_config(config))
    if len(_memo) >= MAX_ENTRIES:
        _memo.clear()
    _memo[key] = (defaults, settings)
    return settings
