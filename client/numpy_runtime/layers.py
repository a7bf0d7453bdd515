"""Forward and backward passes of each supported layer, by hand in vectorised numpy.

Each layer is built from its :mod:`fedge.tasks.layer_spec` description and is
stateless: ``forward(x, p)`` takes the input and the layer's tensors ``p`` (``weight``,
``bias``: the network's, or their fake-quantised stand-ins under QAT) and returns the
output and a *cache* (a tuple of what the backward pass needs); ``backward(dy, cache,
p)`` returns ``dL/dx`` (None when ``need_dx`` is false: the network's first layer) and
the gradients of ``p``. What a cache keeps is what torch's
autograd saves for the same layer (the input of a conv or linear layer, a ReLU's
output, a max pool's argmax positions: one byte each where torch keeps int64), so the
memory meter counts comparable bytes.

The arithmetic follows torch's CPU kernels where the choice matters for parity:
a max pool sends the gradient to the first maximum of its window in row-major order,
ReLU's gradient at 0 is 0, ReLU6 passes gradients strictly inside (0, 6), GroupNorm
uses the biased variance.

Hand-written because the device runtime may not depend on torch and no small numpy
library provides backward passes (autograd/JAX are either unmaintained or large).
Convolutions use im2col through ``sliding_window_view`` (no copy until the matrix
product) and one BLAS matrix product; 1-D layers run as 2-D layers of height 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fedge.tasks import layer_spec as spec

Cache = tuple
Params = Mapping[str, np.ndarray]


class NumpyLayer(Protocol):
    """One layer's passes; ``tensors`` names its trainable tensors and their shapes."""

    tensors: dict[str, tuple[int, ...]]

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]: ...

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]: ...


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """``(N, C, H, W)`` -> view ``(N, C, Ho, Wo, kh, kw)`` of every window (no copy)."""
    return sliding_window_view(x, kernel, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]


class Conv:
    """``Conv2d`` and ``Conv1d`` (as height-1 2-D); grouped and depthwise included."""

    def __init__(self, layer: spec.Conv2d | spec.Conv1d) -> None:
        self.one_d = isinstance(layer, spec.Conv1d)
        if isinstance(layer, spec.Conv1d):
            self.kernel, self.stride, self.padding = (1, layer.kernel_size), (1, layer.stride), (0, layer.padding)
        else:
            self.kernel = spec.as_pair(layer.kernel_size)
            self.stride, self.padding = spec.as_pair(layer.stride), spec.as_pair(layer.padding)
        self.groups = layer.groups
        self.has_bias = layer.bias
        self.tensors = spec.tensor_shapes(layer)

    def _as_2d(self, x: np.ndarray) -> np.ndarray:
        return x[:, :, None, :] if self.one_d else x

    def _cols(self, x: np.ndarray) -> tuple[np.ndarray, int, int]:
        """im2col, transposed: ``(C*kh*kw, N*Ho*Wo)`` (one copy whose rows are contiguous runs
        of the input rows) and the output size."""
        ph, pw = self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        win = _windows(xp, self.kernel, self.stride)
        n, c, ho, wo, kh, kw = win.shape
        return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * ho * wo), ho, wo

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        x2 = self._as_2d(x)
        n = x2.shape[0]
        cols, ho, wo = self._cols(x2)
        w = p["weight"]
        o, g = w.shape[0], self.groups
        if g == 1:
            y = w.reshape(o, -1) @ cols  # (O, N*Ho*Wo)
        else:  # (g, O/g, K/g) @ (g, K/g, M) -> (O, M)
            y = np.matmul(w.reshape(g, o // g, -1), cols.reshape(g, -1, cols.shape[1])).reshape(o, -1)
        if self.has_bias:
            y += p["bias"][:, None]
        out = np.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))
        return (out[:, :, 0, :] if self.one_d else out), (x,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        (x,) = cache
        x2 = self._as_2d(x)
        dy2 = self._as_2d(dy)
        n, c, h, wd = x2.shape
        w = p["weight"]
        o, g = w.shape[0], self.groups
        cols, ho, wo = self._cols(x2)
        dym = dy2.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*Ho*Wo)
        grads: dict[str, np.ndarray] = {}
        if g == 1:
            grads["weight"] = (dym @ cols.T).reshape(w.shape)
        else:
            gdy = dym.reshape(g, o // g, -1)  # (g, O/g, M)
            gcols = cols.reshape(g, -1, cols.shape[1])  # (g, K/g, M)
            grads["weight"] = np.matmul(gdy, gcols.transpose(0, 2, 1)).reshape(w.shape)
        if self.has_bias:
            grads["bias"] = dym.sum(axis=1)
        if not need_dx:
            return None, grads
        if g == 1:
            dcols = w.reshape(o, -1).T @ dym  # (C*kh*kw, N*Ho*Wo)
        else:
            dcols = np.matmul(w.reshape(g, o // g, -1).transpose(0, 2, 1), gdy).reshape(-1, dym.shape[1])
        kh, kw = self.kernel
        sh, sw = self.stride
        ph, pw = self.padding
        dcols6 = dcols.reshape(c, kh, kw, n, ho, wo)
        dxp = np.zeros((c, n, h + 2 * ph, wd + 2 * pw), dtype=dy.dtype)  # col2im, channel-major
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += dcols6[:, i, j]
        dx = dxp[:, :, ph : ph + h, pw : pw + wd].transpose(1, 0, 2, 3)
        return (dx[:, :, 0, :] if self.one_d else dx), grads


class Linear:
    """``y = x W^T + b``."""

    def __init__(self, layer: spec.Linear) -> None:
        self.has_bias = layer.bias
        self.tensors = spec.tensor_shapes(layer)

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        y = x @ p["weight"].T
        if self.has_bias:
            y += p["bias"]
        return y, (x,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        (x,) = cache
        grads = {"weight": dy.T @ x}
        if self.has_bias:
            grads["bias"] = dy.sum(axis=0)
        return (dy @ p["weight"] if need_dx else None), grads


class ReLU:
    """``max(x, 0)``; keeps its output (the next layer usually keeps the same array)."""

    tensors: dict[str, tuple[int, ...]] = {}

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        y = np.maximum(x, 0)
        return y, (y,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        (y,) = cache
        return dy * (y > 0), {}


class ReLU6:
    """``min(max(x, 0), 6)``; gradient passes where ``0 < x < 6`` (torch's hardtanh_backward)."""

    tensors: dict[str, tuple[int, ...]] = {}

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        return np.clip(x, 0, 6), (x,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        (x,) = cache
        return np.where((x > 0) & (x < 6), dy, 0).astype(dy.dtype, copy=False), {}


class MaxPool:
    """``MaxPool2d`` / ``MaxPool1d`` (height 1): no padding, floor mode; keeps argmax indices."""

    tensors: dict[str, tuple[int, ...]] = {}

    def __init__(self, layer: spec.MaxPool2d | spec.MaxPool1d) -> None:
        self.one_d = isinstance(layer, spec.MaxPool1d)
        if isinstance(layer, spec.MaxPool1d):
            k = layer.kernel_size
            self.kernel, self.stride = (1, k), (1, layer.stride or k)
        else:
            self.kernel = spec.as_pair(layer.kernel_size)
            self.stride = spec.as_pair(layer.stride) if layer.stride is not None else self.kernel

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        x2 = x[:, :, None, :] if self.one_d else x
        kh, kw = self.kernel
        sh, sw = self.stride
        ho, wo = (x2.shape[2] - kh) // sh + 1, (x2.shape[3] - kw) // sw + 1
        # Scan the window positions in row-major order; a later position wins only if
        # strictly greater: the first maximum, as torch's kernel (and its indices) pick.
        best = x2[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
        arg = np.zeros(best.shape, dtype=np.uint8 if kh * kw < 256 else np.int64)
        for k in range(1, kh * kw):
            a, b = divmod(k, kw)
            candidate = x2[:, :, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw]
            better = candidate > best
            best = np.where(better, candidate, best)
            arg[better] = k
        y = np.ascontiguousarray(best)
        return (y[:, :, 0, :] if self.one_d else y), (arg, x.shape)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        arg, shape = cache
        dy2 = dy[:, :, None, :] if self.one_d else dy
        n, c, ho, wo = dy2.shape
        h, w = (1, shape[-1]) if self.one_d else shape[2:]
        kh, kw = self.kernel
        sh, sw = self.stride
        dx = np.zeros((n, c, h, w), dtype=dy.dtype)
        for k in range(kh * kw):
            a, b = divmod(k, kw)
            # Overlapping windows (stride < kernel) add into the same input: accumulate.
            dx[:, :, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw] += np.where(arg == k, dy2, 0)
        return dx.reshape(shape), {}


class GlobalAvgPool:
    """``AdaptiveAvgPool2d(1)`` / ``AdaptiveAvgPool1d(1)``: the mean over all positions."""

    tensors: dict[str, tuple[int, ...]] = {}

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), (x.shape,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        (shape,) = cache
        positions = int(np.prod(shape[2:]))
        return np.broadcast_to(dy / positions, shape).copy(), {}


class Flatten:
    """``(N, ...) -> (N, -1)`` (a view)."""

    tensors: dict[str, tuple[int, ...]] = {}

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        return x.reshape(len(x), -1), (x.shape,)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        return dy.reshape(cache[0]), {}


class GroupNorm:
    """GroupNorm with biased variance; keeps its input, the group means and 1/std (as torch)."""

    def __init__(self, layer: spec.GroupNorm) -> None:
        self.groups, self.eps, self.affine = layer.num_groups, layer.eps, layer.affine
        self.tensors = spec.tensor_shapes(layer)

    def _normalised(self, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> np.ndarray:
        return ((x.reshape(len(x), self.groups, -1) - mean) * rstd).reshape(x.shape)

    def _channel(self, v: np.ndarray, ndim: int) -> np.ndarray:
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x: np.ndarray, p: Params) -> tuple[np.ndarray, Cache]:
        g = x.reshape(len(x), self.groups, -1)
        mean = g.mean(axis=-1, keepdims=True)
        var = ((g - mean) ** 2).mean(axis=-1, keepdims=True)
        rstd = 1.0 / np.sqrt(var + self.eps)
        y = self._normalised(x, mean, rstd)
        if self.affine:
            y = y * self._channel(p["weight"], x.ndim) + self._channel(p["bias"], x.ndim)
        return y, (x, mean, rstd)

    def backward(self, dy: np.ndarray, cache: Cache, p: Params, need_dx: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        x, mean, rstd = cache
        xhat = self._normalised(x, mean, rstd)
        grads: dict[str, np.ndarray] = {}
        axes = (0, *range(2, x.ndim))
        if self.affine:
            grads["weight"] = (dy * xhat).sum(axis=axes)
            grads["bias"] = dy.sum(axis=axes)
            dxhat = dy * self._channel(p["weight"], x.ndim)
        else:
            dxhat = dy
        n = len(x)
        dg = dxhat.reshape(n, self.groups, -1)
        xg = xhat.reshape(n, self.groups, -1)
        dx = rstd * (dg - dg.mean(axis=-1, keepdims=True) - xg * (dg * xg).mean(axis=-1, keepdims=True))
        return dx.reshape(x.shape), grads


def build_layer(layer: spec.Layer) -> NumpyLayer:
    """The numpy passes of one spec layer."""
    if isinstance(layer, (spec.Conv2d, spec.Conv1d)):
        return Conv(layer)
    if isinstance(layer, spec.Linear):
        return Linear(layer)
    if isinstance(layer, spec.ReLU):
        return ReLU()
    if isinstance(layer, spec.ReLU6):
        return ReLU6()
    if isinstance(layer, (spec.MaxPool2d, spec.MaxPool1d)):
        return MaxPool(layer)
    if isinstance(layer, (spec.AdaptiveAvgPool2d, spec.AdaptiveAvgPool1d)):
        return GlobalAvgPool()
    if isinstance(layer, spec.Flatten):
        return Flatten()
    if isinstance(layer, spec.GroupNorm):
        return GroupNorm(layer)
    raise spec.UnsupportedLayerError(f"{type(layer).__name__} has no numpy implementation")
