"""The image models of the tasks: a small two-conv CNN and a MobileNet-style deep net.

:class:`SmallCNN` is the default model of ``digits`` (8x8, 3x3 kernels, one pooling)
and ``image`` (28x28, 5x5 kernels, pooling after each conv): two conv blocks and two
linear layers, sized by the task's input shape.

:class:`EdgeMobileNet` is the deep edge model (Howard et al. 2017, MobileNet v1
blocks): a stem conv, then depthwise-separable blocks (3x3 depthwise conv + 1x1
pointwise conv, each with GroupNorm and ReLU6), then global pooling and a linear
classifier. It is an ``nn.Sequential`` of *segments* (stem, blocks, head) so
``torch.utils.checkpoint.checkpoint_sequential`` can cut it anywhere, and it takes
its input shape and class count from the task.

GroupNorm, not BatchNorm: a checkpointed segment runs its forward twice, which would
update BatchNorm's running statistics twice, and per-device batch statistics are a
poor fit for non-IID federations anyway (Hsieh et al. 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers: (N, C, H, W) -> (N, num_classes) logits.

    ``features``: conv(C -> ``width``), ReLU, conv(``width`` -> ``2*width``), ReLU, each
    conv ``kernel_size`` wide with "same" padding; a 2x2 max-pool follows each of the
    last ``pools`` conv blocks (1: after the second only; 2: after both). ``classifier``:
    flatten, linear to ``hidden`` units, ReLU, linear to ``num_classes``.

    ``digits`` (1x8x8, kernel 3, 1 pool, width 16): 38,282 parameters; ``image``
    (1x28x28, kernel 5, 2 pools, width 16): 114,314 parameters. Layers are created
    (and so initialised from torch's RNG) in forward order: the same seed gives the
    same weights as the two task-specific classes this one replaced.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 16,
        kernel_size: int = 3,
        pools: int = 1,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if pools not in (0, 1, 2):
            raise ValueError(f"pools must be 0, 1 or 2, got {pools}")
        channels, height, side = input_shape
        if min(height, side) < 2**pools:
            raise ValueError(f"input {tuple(input_shape)} is too small for {pools} 2x2 poolings")
        layers: list[nn.Module] = []
        for block, (c_in, c_out) in enumerate(((channels, width), (width, 2 * width))):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            if block >= 2 - pools:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        flat = 2 * width * (height // 2**pools) * (side // 2**pools)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, num_classes) logits."""
        return self.classifier(self.features(x))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


def separable_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 depthwise conv (``groups=c_in``) then 1x1 pointwise conv: (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        _norm(c_in),
        nn.ReLU6(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        _norm(c_out),
        nn.ReLU6(),
    )


class EdgeMobileNet(nn.Sequential):
    """MobileNet-style classifier for (N, C, H, W) images, as a sequence of segments.

    Parameters
    ----------
    input_shape:
        ``(C, H, W)`` of one example.
    num_classes:
        Output logits per example.
    width:
        Channels of the stem; blocks widen to ``2*width`` and ``4*width``.
    depth:
        Depthwise-separable blocks at each of the three widths.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 3) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        channels, height, _ = input_shape
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), _norm(width), nn.ReLU6())
        ]
        c = width
        # Downsample once per stage while the feature map is larger than 4x4.
        size = height
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(depth):
                stride = 2 if (i == 0 and stage > 0 and size > 4) else 1
                size = -(-size // stride)
                layers.append(separable_block(c, c_out, stride))
                c = c_out
        layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)))
        super().__init__(*layers)
