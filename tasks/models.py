"""The image models of the tasks, as layer specs: a small two-conv CNN and a MobileNet-style deep net.

:func:`small_cnn` is the default model of ``digits`` and ``image``.

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

from fedge.tasks.layer_spec import (
    AdaptiveAvgPool2d,
    Conv2d,
    Flatten,
    GroupNorm,
    Linear,
    MaxPool2d,
    ReLU,
    ReLU6,
    Sequential,
)


def small_cnn(
    input_shape: Sequence[int], num_classes: int, width: int = 16, kernel_size: int = 3, pools: int = 1, hidden: int = 64
) -> Sequential:
    """Two conv blocks and two linear layers: (N, C, H, W) -> (N, num_classes) logits.

    ``features``: conv(C -> ``width``), ReLU, conv(``width`` -> ``2*width``), ReLU, each
    conv ``kernel_size`` wide with "same" padding; a 2x2 max-pool follows each of the
    last ``pools`` conv blocks (1: after the second only; 2: after both). ``classifier``:
    flatten, linear to ``hidden`` units, ReLU, linear to ``num_classes``.

    ``digits`` (1x8x8, kernel 3, 1 pool, width 16): 38,282 parameters; ``image``
    (1x28x28, kernel 5, 2 pools, width 16): 114,314 parameters. One spec for both tasks
    (they were two copies of one network); layers are created in forward order, so a
    seed gives the weights the two task-specific models gave.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    if pools not in (0, 1, 2):
        raise ValueError(f"pools must be 0, 1 or 2, got {pools}")
    channels, height, side = input_shape
    if min(height, side) < 2**pools:
        raise ValueError(f"input {tuple(input_shape)} is too small for {pools} 2x2 poolings")
    layers: list = []
    for block, (c_in, c_out) in enumerate(((channels, width), (width, 2 * width))):
        layers += [Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), ReLU()]
        if block >= 2 - pools:
            layers.append(MaxPool2d(2))
    flat = 2 * width * (height // 2**pools) * (side // 2**pools)
    return Sequential.named(
        features=Sequential.of(*layers),
        classifier=Sequential.of(Flatten(), Linear(flat, hidden), ReLU(), Linear(hidden, num_classes)),
    )


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
