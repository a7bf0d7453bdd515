"""Low-rank factorisation: a Linear or Conv layer split into two by truncated SVD.

A weight ``W`` of shape ``(out, in)`` (Linear) or ``(out, in, *kernel)`` (Conv, ``groups=1``)
is reshaped to a matrix ``(out, in * prod(kernel))``, decomposed ``W = U S V^T`` and cut at
rank ``r``; the layer becomes two in sequence (an ``nn.Sequential`` at the layer's place):

* Linear ``name`` -> ``name.0`` = Linear(in, r, no bias), weight ``sqrt(S_r) V_r^T``;
  ``name.1`` = Linear(r, out), weight ``U_r sqrt(S_r)`` and the original bias.
* Conv ``name`` -> ``name.0`` = Conv(in, r, kernel, same stride/padding/dilation, no bias);
  ``name.1`` = 1x1 Conv(r, out) with the original bias.

So a factorised model's state names are the original ones with ``weight`` replaced by
``0.weight`` and ``1.weight`` and ``bias`` by ``1.bias`` (e.g. ``classifier.1.weight`` ->
``classifier.1.0.weight``, ``classifier.1.1.weight``, ``classifier.1.1.bias``).
A rank-``r`` pair has ``r * (out + in * prod(kernel))`` weights instead of
``out * in * prod(kernel)``; a layer is factorised only where that is smaller.

The rank is chosen per layer by one of (tuning advice in brackets):

* ``rank``: the same fixed rank everywhere (above a layer's ``min(out, in*k)`` is refused);
* ``energy``: the smallest rank keeping this share of ``sum(S^2)`` (0.9-0.99; lower cuts
  more and costs accuracy that fine-tuning must win back);
* ``budget``: the largest rank whose pair has at most this share of the layer's parameters
  (0.5 = at least 2x fewer).

Hand-written because torch has no layer-replacing SVD utility (``torch.linalg.svd`` does
the maths); the few lines of module surgery are here.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

#: Layers that can be factorised.
FACTORISABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LowRankConfig:
    """How to factorise (``shape.lowrank.*``); exactly one of rank, energy, budget is set (> 0).

    ``layers``: fnmatch patterns of module names to consider (``[]`` = every Linear/Conv
    with ``groups=1``); ``skip``: patterns never factorised (e.g. the last classifier layer).
    """

    rank: int = 0
    energy: float = 0.0
    budget: float = 0.0
    layers: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise ``ValueError`` naming the ``shape.lowrank`` key that cannot work."""
        chosen = [k for k in ("rank", "energy", "budget") if getattr(self, k)]
        if len(chosen) != 1:
            raise ValueError(f"shape.lowrank: set exactly one of rank, energy, budget (> 0), got {chosen or 'none'}")
        if self.rank < 0:
            raise ValueError(f"shape.lowrank.rank must be >= 1, got {self.rank}")
        if not 0 <= self.energy < 1:
            raise ValueError(f"shape.lowrank.energy must be in (0, 1), got {self.energy}")
        if not 0 <= self.budget < 1:
            raise ValueError(f"shape.lowrank.budget must be in (0, 1), got {self.budget}")


@dataclass(frozen=True)
class FactorisedLayer:
    """What factorising one layer did: its name, rank, and weights before and after."""

    name: str
    rank: int
    full_rank: int
    params_before: int
    params_after: int


def _matrix(layer: nn.Module) -> torch.Tensor:
    weight = layer.get_parameter("weight").detach()
    return weight.reshape(weight.shape[0], -1)


def _selected(name: str, layer: nn.Module, cfg: LowRankConfig) -> bool:
    if not isinstance(layer, FACTORISABLE) or getattr(layer, "groups", 1) != 1:
        return False
    if cfg.layers and not any(fnmatch.fnmatchcase(name, p) for p in cfg.layers):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in cfg.skip)


def choose_rank(singular: torch.Tensor, out: int, inner: int, cfg: LowRankConfig, name: str) -> int:
    """The rank ``cfg`` asks for, for a layer with these singular values and ``(out, inner)`` matrix."""
    full = min(out, inner)
    if cfg.rank:
        if cfg.rank > full:
            raise ValueError(f"shape.lowrank.rank={cfg.rank} is above layer {name!r}'s rank {full} (matrix {out}x{inner})")
        return cfg.rank
    if cfg.energy:
        share = torch.cumsum(singular**2, 0) / (singular**2).sum()
        return min(full, int((share < cfg.energy).sum()) + 1)
    return max(1, math.floor(cfg.budget * out * inner / (out + inner)))


def _pair(layer: nn.Module, rank: int) -> nn.Sequential:
    """The two layers replacing ``layer`` at ``rank``, initialised from its truncated SVD."""
    matrix = _matrix(layer)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    bias = layer.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias)
    else:
        conv = type(layer)
        assert isinstance(layer, (nn.Conv1d, nn.Conv2d))
        first = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
        second = conv(rank, layer.out_channels, 1, bias=bias)
    with torch.no_grad():
        first.get_parameter("weight").copy_(first_w.reshape(first.get_parameter("weight").shape))
        second.get_parameter("weight").copy_(second_w.reshape(second.get_parameter("weight").shape))
        if bias:
            second.get_parameter("bias").copy_(layer.get_parameter("bias").detach())
    return nn.Sequential(first, second)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorise(model: nn.Module, cfg: LowRankConfig, ranks: Mapping[str, int] | None = None) -> list[FactorisedLayer]:
    """Factorise ``model``'s selected layers in place; what was done, per layer.

    With ``ranks`` (layer name -> rank, e.g. from an earlier call's report), exactly those
    layers at those ranks: a device rebuilds the server's architecture from it whatever its
    own weights. Raises ``ValueError`` (naming ``shape.lowrank.*``) for a rank above a
    layer's, or when no layer is factorised (nothing would get smaller).
    """
    if ranks is None:
        cfg.check()
    done: list[FactorisedLayer] = []
    for name, layer in list(model.named_modules()):
        if not name or not (name in ranks if ranks is not None else _selected(name, layer, cfg)):
            continue
        matrix = _matrix(layer)
        out, inner = matrix.shape
        if ranks is not None:
            rank = choose_rank(torch.empty(0), out, inner, LowRankConfig(rank=ranks[name]), name)
        else:
            rank = choose_rank(torch.linalg.svdvals(matrix), out, inner, cfg, name)
        before = out * inner
        after = rank * (out + inner)
        if after >= before and ranks is None:  # no saving: keep the layer whole
            continue
        _replace(model, name, _pair(layer, rank))
        done.append(FactorisedLayer(name, rank, min(out, inner), before, after))
    if not done:
        raise ValueError("shape.lowrank: no layer gets smaller at this rank/energy/budget (check layers/skip)")
    return done


def ranks_of(report: object) -> dict[str, int]:
    """Factorised layer name -> rank, from a results.json ``shape`` section (``{}`` if none)."""
    layers = report.get("lowrank") if isinstance(report, dict) else None
    return {str(layer["name"]): int(layer["rank"]) for layer in layers or []}
