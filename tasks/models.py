"""The deep edge model for image tasks: a MobileNet-style net of depthwise-separable blocks.

:func:`edge_mobilenet` is the deep edge model (Howard et al. 2017, MobileNet v1
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

from fedge.tasks.layer_spec import AdaptiveAvgPool2d, Conv2d, Flatten, GroupNorm, Linear, ReLU6, Sequential


def _norm(channels: int) -> GroupNorm:
    return GroupNorm(min(8, channels), channels)


def separable_block(c_in: int, c_out: int, stride: int = 1) -> Sequential:
    """3x3 depthwise conv (``groups=c_in``) then 1x1 pointwise conv: (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""
    return Sequential.of(
        Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        _norm(c_in),
        ReLU6(),
        Conv2d(c_in, c_out, 1, bias=False),
        _norm(c_out),
        ReLU6(),
    )


def edge_mobilenet(input_shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 3) -> Sequential:
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
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
    channels, height, _ = input_shape
    segments: list[Sequential] = [Sequential.of(Conv2d(channels, width, 3, padding=1, bias=False), _norm(width), ReLU6())]
    c = width
    # Downsample once per stage while the feature map is larger than 4x4.
    size = height
    for stage, c_out in enumerate((width, 2 * width, 4 * width)):
        for i in range(depth):
            stride = 2 if (i == 0 and stage > 0 and size > 4) else 1
            size = -(-size // stride)
            segments.append(separable_block(c, c_out, stride))
            c = c_out
    segments.append(Sequential.of(AdaptiveAvgPool2d(1), Flatten(), Linear(c, num_classes)))
    return Sequential.of(*segments)
