"""Sparsification: top-k (largest magnitudes) and random-k, values coded by any codec.

A sparse tensor is sent as two ``parts``: the kept positions (index coding, see
:mod:`index_coding`) and the kept values, encoded by the ``values`` codec (``fp32``,
``fp16``, ``q8``, ...): sparsify, then quantise. Random-k sends no indices at all: the
decoder regenerates them from the seed in ``params``. Random-k's ``ints = [k, seed]``. Top-k is biased (run it with
error feedback); random-k with ``unbiased=True`` scales values by ``d / k`` so that
``E[decode(encode(x))] = x``.

Top-k's ``scope`` says over what the budget is counted. ``tensor`` keeps ``ratio`` of
every tensor. ``global`` keeps ``k = ratio * (elements of the whole update)`` entries,
the largest magnitudes anywhere in the update (as in DGC's and Sparse Ternary
Compression's model-wide threshold), so a layer gets as many entries as it has large
ones, possibly none; :meth:`Codec.allocate` splits the budget into per-tensor counts
and the wire stays one ordinary top-k ``CompressedTensor`` per tensor.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, MutableMapping

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
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]).astype(np.int64)


def global_top_k_positions(arrays: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Sorted positions, in each of ``arrays``, of the ``k`` largest magnitudes over all.

    One selection over all elements: the magnitudes go once into one float32 buffer,
    one in-place partition of a copy finds the ``k``-th largest magnitude ``t``, and
    each array keeps its entries above ``t`` plus, in order of position, as many at
    ``t`` as the budget has left. The positions of all arrays together number
    ``min(k, total elements)``. Costs ~4 passes over the update plus the partition
    (``bench/codec_speed.py``); the per-tensor encoders then select nothing again.
    """
    names = list(arrays)
    flats = [np.asarray(arrays[n]).reshape(-1) for n in names]
    sizes = [f.size for f in flats]
    total = sum(sizes)
    if k >= total:
        return {n: np.arange(s, dtype=np.int64) for n, s in zip(names, sizes)}
    if k <= 0:
        return {n: np.zeros(0, dtype=np.int64) for n in names}
    magnitudes = np.empty(total, dtype=np.float32)
    start = 0
    for flat in flats:
        np.abs(flat, out=magnitudes[start : start + flat.size], casting="same_kind")
        start += flat.size
    work = magnitudes.copy()
    work.partition(total - k)
    threshold = work[total - k]
    del work
    above = magnitudes > threshold
    ties_left = k - int(np.count_nonzero(above))  # >= 1: the threshold itself is one of the k
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, size in zip(names, sizes):
        piece = magnitudes[start : start + size]
        keep = above[start : start + size]
        if ties_left > 0:
            ties = np.flatnonzero(piece == threshold)[:ties_left]
            ties_left -= ties.size
            keep[ties] = True
        out[name] = np.flatnonzero(keep).astype(np.int64, copy=False)
        start += size
    return out


class _Sparse(Codec):
    def __init__(self, ratio: float = 0.01, values: str = "fp32") -> None:
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"{self.name}: ratio must be in (0, 1], got {ratio}")
        self.ratio = ratio
        self.values = make_codec(str(values))
        self.keep: int | None = None  # a fixed count for one tensor (set by `allocate`)
        self.positions: np.ndarray | None = None  # chosen positions for one tensor (global top-k's `allocate`)

    def _count(self, size: int) -> int:
        return min(size, self.keep) if self.keep is not None else kept_count(size, self.ratio)

    def _select(self, flat: np.ndarray, k: int, msg: pb.CompressedTensor) -> np.ndarray:
        raise NotImplementedError

    def _positions(self, msg: pb.CompressedTensor, n: int) -> np.ndarray:
        raise NotImplementedError

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        flat = np.asarray(array, dtype=np.float32).ravel()
        k = self._count(flat.size)
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
    """Keep the ``ratio`` share of entries with the largest magnitude (biased: use error feedback).

    ``scope="tensor"``: ``ratio`` of each tensor (at least one entry each);
    ``scope="global"``: ``ratio`` of the whole update, the largest entries anywhere.
    """

    SCOPES = ("tensor", "global")

    def __init__(self, ratio: float = 0.01, values: str = "fp32", scope: str = "tensor") -> None:
        super().__init__(ratio, values)
        if scope not in self.SCOPES:
            raise ValueError(f"topk: scope must be one of {', '.join(self.SCOPES)}, got {scope!r}")
        self.scope = scope

    def allocate(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Codec]:
        if self.scope == "tensor":
            return super().allocate(arrays)
        total = sum(np.asarray(a).size for a in arrays.values())
        positions = global_top_k_positions(arrays, kept_count(total, self.ratio))
        out: dict[str, Codec] = {}
        for name, chosen in positions.items():
            codec = copy.copy(self)
            codec.scope, codec.keep, codec.positions = "tensor", chosen.size, chosen
            out[name] = codec
        return out

    def _select(self, flat: np.ndarray, k: int, msg: pb.CompressedTensor) -> np.ndarray:
        if self.positions is not None and self.positions.size == k and (k == 0 or self.positions[-1] < flat.size):
            idx = self.positions  # chosen once for the whole update by `allocate`
        else:
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
