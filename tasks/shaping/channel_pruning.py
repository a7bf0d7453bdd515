"""Structured (channel) pruning of a layer-spec model with ``torch-pruning``'s dependency graph.

At each pruning round the server rebuilds the global model from its spec and weights,
ranks every prunable layer's output channels (filters, hidden units) by importance and
removes the least important, together with everything coupled to them: the next conv's
input channels, the ``H*W`` input features per channel of a linear layer after a
flatten. The result is a smaller :class:`~fedge.tasks.layer_spec.Sequential` (read back
with :func:`~fedge.tasks.layer_spec.from_torch`) and its weights; devices rebuild it
from the spec the server sends (:mod:`fedge.tasks.shaping.architecture`).

Importance: the L1 or L2 norm of each channel's *group* (its filter and the weights
that read it, Li et al. 2017 "Pruning filters for efficient ConvNets"), computed by the
server from the global model (``torch_pruning.importance.GroupMagnitudeImportance``):
the global weights already average every device's data, so nothing extra travels.

Schedule: ``ratio`` is the share of each prunable layer's *original* channels removed by
the last of ``rounds``; pruning round ``i`` of ``n`` removes up to ``ratio * i / n``
(gradual pruning loses less accuracy than one cut; leave rounds after the last to
recover). ``layers`` sets a ratio per layer; ``ignore`` lists layers never pruned (the
classifier's last layer never is: its outputs are the classes). Tuning: on the image
CNN a ratio of 0.35 leaves about 42% of the multiply-accumulates.

Uses ``torch-pruning`` (Fang et al. 2023, DepGraph) rather than hand-written index
surgery: its dependency graph finds the coupled layers of any torch model and
``count_ops_and_params`` counts multiply-accumulates.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedge.tasks.shaping.architecture import to_json
from fedge.tasks.layer_spec import Conv1d, Conv2d, GroupNorm, Linear, Sequential, from_torch, to_torch

IMPORTANCES = ("l1", "l2")


@dataclass(frozen=True)
class ChannelPruningConfig:
    """``shape.structured.*``: see the module docstring (``ratio`` 0 = off)."""

    ratio: float = 0.0
    rounds: Sequence[int] = ()
    importance: str = "l2"
    layers: Mapping[str, float] = field(default_factory=dict)
    ignore: Sequence[str] = ()

    def ratio_of(self, layer: str) -> float:
        return float(self.layers.get(layer, self.ratio))

    def check(self, spec: Sequential, num_rounds: int) -> None:
        """Refuse a setting that cannot work for the model ``spec``; ``ValueError`` names the key."""
        if not 0 < self.ratio < 1 and not self.layers:
            raise ValueError(f"shape.structured.ratio must be in (0, 1), got {self.ratio}")
        if not self.rounds:
            raise ValueError("shape.structured.rounds: give the rounds to prune at, e.g. [3, 6]")
        if list(self.rounds) != sorted(set(self.rounds)) or not all(1 <= r <= num_rounds for r in self.rounds):
            raise ValueError(f"shape.structured.rounds must be increasing rounds in [1, rounds={num_rounds}], got {list(self.rounds)}")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"shape.structured.importance must be one of {IMPORTANCES}, got {self.importance!r}")
        widths = prunable_widths(spec, self.ignore)
        for name in self.layers:
            if name not in widths:
                raise ValueError(f"shape.structured.layers.{name}: no prunable layer of that name (prunable: {sorted(widths)})")
        for name, width in widths.items():
            key = f"shape.structured.layers.{name}" if name in self.layers else "shape.structured.ratio"
            ratio = self.ratio_of(name)
            if not 0 <= ratio <= 1:
                raise ValueError(f"{key}={ratio} must be in [0, 1)")
            if kept(width, ratio) < 1:
                raise ValueError(f"{key}={ratio} prunes layer {name!r} ({width} channels) to zero channels")


def kept(width: int, ratio: float) -> int:
    """Channels a layer of ``width`` keeps at ``ratio`` (rounded to the nearest)."""
    return width - int(round(width * ratio))


def prunable_widths(spec: Sequential, ignore: Sequence[str] = ()) -> dict[str, int]:
    """Output widths of the layers channel pruning may shrink: every Conv/Linear but the last and ``ignore``.

    Raises ``ValueError`` for a model it cannot prune (GroupNorm or depthwise convolutions:
    their channel groups would need pruning in multiples of the group count).
    """
    layers = list(spec.layers())
    weighted = [(name, layer) for name, layer in layers if isinstance(layer, (Conv1d, Conv2d, Linear))]
    for name, layer in layers:
        if isinstance(layer, GroupNorm) or (isinstance(layer, (Conv1d, Conv2d)) and layer.groups != 1):
            raise ValueError(f"shape.structured: layer {name!r} ({type(layer).__name__}, grouped) cannot be channel-pruned here")
    out: dict[str, int] = {}
    for name, layer in weighted[:-1]:
        if any(fnmatch.fnmatchcase(name, p) for p in ignore):
            continue
        out[name] = layer.out_features if isinstance(layer, Linear) else layer.out_channels
    return out


@dataclass(frozen=True)
class PrunedModel:
    """One pruning step's result: the new spec and weights, with its size."""

    spec: Sequential
    arrays: dict[str, np.ndarray]
    macs: int  # multiply-accumulates of one forward pass of one example
    params: int
    widths: dict[str, int]  # prunable layer -> output channels now


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """``(multiply-accumulates, parameters)`` of one example's forward pass (``torch_pruning.utils``)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    return int(macs), int(params)


def _model(spec: Sequential, arrays: Mapping[str, np.ndarray]) -> nn.Module:
    model = to_torch(spec)
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def prune_step(
    spec: Sequential,
    arrays: Mapping[str, np.ndarray],
    original: Mapping[str, int],
    share: float,
    cfg: ChannelPruningConfig,
    input_shape: Sequence[int],
) -> PrunedModel:
    """Prune ``spec`` with weights ``arrays`` until each layer has lost ``share`` of its ``cfg`` ratio.

    ``original``: each prunable layer's width before any pruning (the ratios refer to it);
    ``share`` in (0, 1]: how far along the schedule this step is (``i / n``).
    """
    import torch_pruning as tp

    model = _model(spec, arrays)
    modules = dict(model.named_modules())
    widths = prunable_widths(spec, cfg.ignore)
    ratios: dict[nn.Module, float] = {}
    for name, width in widths.items():
        target = kept(original[name], cfg.ratio_of(name) * share)
        ratios[modules[name]] = max(0.0, 1 - target / width)
    ignored = [modules[name] for name, layer in spec.layers() if isinstance(layer, (Conv1d, Conv2d, Linear)) and name not in widths]
    importance = tp.importance.GroupMagnitudeImportance(p=1 if cfg.importance == "l1" else 2)
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance, pruning_ratio=0.0, pruning_ratio_dict=ratios, ignored_layers=ignored
    )
    with torch.no_grad():
        pruner.step()
    new_spec = from_torch(model)
    macs, params = count_macs(model, input_shape)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return PrunedModel(new_spec, state, macs, params, prunable_widths(new_spec, cfg.ignore))


class ChannelPruner:
    """The server's structured pruning: call it with each round's global weights.

    Holds the current spec (``spec``) and a ``report`` (results.json ``shape.structured``):
    MACs and parameters before and after each pruning round, the widths, the final spec.
    """

    def __init__(self, spec: Sequential, cfg: ChannelPruningConfig, input_shape: Sequence[int]) -> None:
        self.spec = spec
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.original = prunable_widths(spec, cfg.ignore)
        macs, params = count_macs(to_torch(spec), self.input_shape)
        self.report: dict[str, object] = {
            "ratio": cfg.ratio, "rounds": list(cfg.rounds), "importance": cfg.importance,
            "macs_before": macs, "params_before": params, "macs_after": macs, "params_after": params,
            "steps": [],
        }

    def __call__(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> PrunedModel | None:
        """The pruned model if ``server_round`` is a pruning round, else None."""
        if server_round not in self.cfg.rounds:
            return None
        share = (list(self.cfg.rounds).index(server_round) + 1) / len(self.cfg.rounds)
        pruned = prune_step(self.spec, arrays, self.original, share, self.cfg, self.input_shape)
        self.spec = pruned.spec
        steps = self.report["steps"]
        assert isinstance(steps, list)
        steps.append({"round": server_round, "macs": pruned.macs, "params": pruned.params, "widths": pruned.widths})
        self.report.update(macs_after=pruned.macs, params_after=pruned.params, architecture=to_json(pruned.spec))
        return pruned

    def model(self) -> nn.Module:
        """A fresh torch model of the current architecture (the central evaluator's)."""
        return to_torch(self.spec)
