"""Sparsification: top-k (largest magnitudes) and random-k, values coded by any codec.

A sparse tensor is sent as two ``parts``: the kept positions (index coding, see
:mod:`index_coding`) and the kept values, encoded by the ``values`` codec (``fp32``,
``fp16``, ``q8``, ...): sparsify, then quantise. Random-k sends no indices at all: the
decoder regenerates them from the seed in ``params``. Random-k's ``ints = [k, seed]``. Top-k is biased (run it with
error feedback); random-k with ``unbiased=True`` scales values by ``d / k`` so that
``E[decode(encode(x))] = x``.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs.base import Codec, ints_of, make_codec, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.codecs.index_coding import decode_indices, encode_indices
from fedge.protos.v1 import tensor_pb2 as pb


def kept_count(size: int, ratio: float) -> int:
    """How many of ``size`` elements a sparsifier with ``ratio`` keeps (at least one)."""
    return min(size, max(1, math.ceil(ratio * size))) if size else 0


def top_k_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest magnitudes of a 1-D array (O(n) selection)."""
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    return np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]).astype(np.int64)


class _Sparse(Codec):
    def __init__(self, ratio: float = 0.01, values: str = "fp32") -> None:
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"{self.name}: ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.values = make_codec(str(values))

    def _select(self, flat: np.ndarray, k: int, msg: pb.CompressedTensor) -> np.ndarray:
        raise NotImplementedError

    def _positions(self, msg: pb.CompressedTensor, n: int) -> np.ndarray:
        raise NotImplementedError

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        flat = np.asarray(array, dtype=np.float32).ravel()
        k = kept_count(flat.size, self.ratio)
        idx = self._select(flat, k, msg)
        msg.parts.append(self.values.encode(flat[idx] * self._value_scale(flat.size, k)))

    def _value_scale(self, n: int, k: int) -> float:
        return 1.0

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        n = num_elements(shape)
        idx = self._positions(msg, n)
        value_part = msg.parts[-1] if msg.parts else None
        if value_part is None or list(value_part.shape) != [idx.size]:
            raise MalformedPayloadError(f"tensor {msg.name!r} ({self.name}): values part does not match {idx.size} indices")
        values = make_codec(value_part.codec).decode(value_part)
        out = np.zeros(n, dtype=dtype)
        out[idx] = values
        return out.reshape(shape)


@register("topk")
class TopKCodec(_Sparse):
    """Keep the ``ratio`` share of entries with the largest magnitude (biased: use error feedback)."""

    def _select(self, flat: np.ndarray, k: int, msg: pb.CompressedTensor) -> np.ndarray:
        idx = top_k_indices(flat, k)
        msg.parts.append(encode_indices(idx, flat.size))
        return idx

    def _positions(self, msg: pb.CompressedTensor, n: int) -> np.ndarray:
        if len(msg.parts) != 2:
            raise MalformedPayloadError(f"tensor {msg.name!r} (topk): expected index and value parts")
        idx = decode_indices(msg.parts[0])
        if not msg.parts[0].ints or int(msg.parts[0].ints[0]) != n:
            raise MalformedPayloadError(f"tensor {msg.name!r} (topk): index universe differs from the shape")
        return idx


@register("randk")
class RandomKCodec(_Sparse):
    """Keep ``ratio`` of the entries chosen at random; indices are regenerated from a seed.

    ``unbiased=True`` scales the kept values by ``d / k`` (unbiased estimator).
    """

    wire_params = (2, 0)

    def __init__(self, ratio: float = 0.01, values: str = "fp32", unbiased: bool = False, seed: int | None = None) -> None:
        super().__init__(ratio, values)
        self.unbiased = bool(unbiased)
        self._rng = np.random.default_rng(seed)

    def _select(self, flat: np.ndarray, k: int, msg: pb.CompressedTensor) -> np.ndarray:
        seed = int(self._rng.integers(1 << 52))
        msg.ints.extend([k, seed])
        return _random_positions(seed, flat.size, k)

    def _value_scale(self, n: int, k: int) -> float:
        return n / k if (self.unbiased and k) else 1.0

    def _positions(self, msg: pb.CompressedTensor, n: int) -> np.ndarray:
        k, seed = ints_of(msg, 2)
        if not 0 <= k <= n or seed < 0 or len(msg.parts) != 1:
            raise MalformedPayloadError(f"tensor {msg.name!r} (randk): bad k {k} or seed")
        return _random_positions(seed, n, k)


def _random_positions(seed: int, n: int, k: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)
