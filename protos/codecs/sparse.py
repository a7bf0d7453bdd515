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

from fedge.protos.codecs.base import Codec, ints_of, make_codec, num_elements, register, require_finite
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


#: Magnitudes sampled (evenly spaced) to guess a lower bound of the k-th largest one.
SAMPLE = 1 << 16
#: Elements per block of the candidate scan: 256 KiB of float32, within a core's L2 cache.
SCAN_BLOCK = 1 << 16


def global_top_k_positions(arrays: Mapping[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Sorted positions, in each of ``arrays``, of the ``k`` largest magnitudes over all.

    One pass over the update, then work on ~1.5 k candidates only:

    1. a guess ``floor`` with (very likely) at least ``k`` magnitudes above it: from an
       evenly spaced sample of ``SAMPLE`` magnitudes, the one ranked a margin above
       ``k``'s share (``1.5 k`` plus four standard deviations);
    2. one scan, block by block in cache, keeps each position whose magnitude is
       ``>= floor`` (the candidates, with their magnitudes); if fewer than ``k`` turn
       up, the guess was too high and the scan runs again over everything (exact
       either way, only slower);
    3. a partition of the candidates' magnitudes gives the ``k``-th largest, ``t``;
       each array keeps its candidates above ``t`` and, in order of position, as many
       at ``t`` as the budget has left.

    The positions of all arrays together number ``min(k, total elements)`` (a NaN
    magnitude is never kept, so fewer with NaNs). Magnitudes compare in float32. The
    per-tensor encoders then select nothing again (``bench/codec_speed.py``).
    """
    names = list(arrays)
    flats = [np.asarray(arrays[n], dtype=np.float32).reshape(-1) for n in names]
    total = sum(f.size for f in flats)
    if k >= total:
        return {n: np.arange(f.size, dtype=np.int64) for n, f in zip(names, flats)}
    if k <= 0:
        return {n: np.zeros(0, dtype=np.int64) for n in names}
    positions, magnitudes = _candidates(flats, _magnitude_floor(flats, total, k))
    if sum(p.size for p in positions) < k:  # the sample's guess was too high
        positions, magnitudes = _candidates(flats, np.float32(-np.inf))
    pooled = np.concatenate(magnitudes)
    if pooled.size <= k:
        return dict(zip(names, positions))
    threshold = np.partition(pooled, pooled.size - k)[pooled.size - k]
    ties_left = k - int(np.count_nonzero(pooled > threshold))  # >= 1: the threshold is one of the k
    out: dict[str, np.ndarray] = {}
    for name, where, mags in zip(names, positions, magnitudes):
        keep = mags > threshold
        if ties_left > 0:
            ties = np.flatnonzero(mags == threshold)[:ties_left]
            ties_left -= ties.size
            keep[ties] = True
        out[name] = where[keep]
    return out


def _magnitude_floor(flats: list[np.ndarray], total: int, k: int) -> np.float32:
    """A magnitude with, very likely, at least ``k`` of the ``total`` at or above it."""
    if total <= 4 * SAMPLE:  # small: every element is a candidate
        return np.float32(-np.inf)
    stride = total // SAMPLE
    sample = np.abs(np.concatenate([f[::stride] for f in flats]))
    expected = k * sample.size / total
    rank = min(sample.size, int(1.5 * expected + 4 * math.sqrt(expected) + 16))
    return np.float32(np.partition(sample, sample.size - rank)[sample.size - rank])


def _candidates(flats: list[np.ndarray], floor: np.float32) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per array: the positions whose magnitude is ``>= floor`` (sorted) and those magnitudes."""
    buffer = np.empty(SCAN_BLOCK, dtype=np.float32)
    positions: list[np.ndarray] = []
    magnitudes: list[np.ndarray] = []
    for flat in flats:
        where: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        found: list[np.ndarray] = [np.zeros(0, dtype=np.float32)]
        for start in range(0, flat.size, SCAN_BLOCK):
            block = flat[start : start + SCAN_BLOCK]
            mags = buffer[: block.size]
            np.abs(block, out=mags)
            hits = np.flatnonzero(mags >= floor)
            if hits.size:
                where.append(hits + start)
                found.append(mags[hits])
        positions.append(np.concatenate(where).astype(np.int64, copy=False))
        magnitudes.append(np.concatenate(found))
    return positions, magnitudes


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
        idx, values = self._kept(msg, num_elements(shape))
        out = np.zeros(num_elements(shape), dtype=dtype)
        out[idx] = values
        return out.reshape(shape)

    def subtract_decoded(self, msg: pb.CompressedTensor, out: np.ndarray) -> None:
        """``out -= decode(msg)`` at the kept positions only (elsewhere it subtracts zero)."""
        shape, dtype = self._header(msg)
        if not out.flags.c_contiguous or out.shape != shape:
            super().subtract_decoded(msg, out)
            return
        idx, values = self._kept(msg, num_elements(shape))
        values = values.astype(dtype, copy=False)  # as `_decode` stores them
        require_finite(msg.name, values)
        flat = out.reshape(-1)
        flat[idx] -= values

    def _kept(self, msg: pb.CompressedTensor, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The kept positions of a tensor of ``n`` elements and their decoded values."""
        idx = self._positions(msg, n)
        value_part = msg.parts[-1] if msg.parts else None
        if value_part is None or list(value_part.shape) != [idx.size]:
            raise MalformedPayloadError(f"tensor {msg.name!r} ({self.name}): values part does not match {idx.size} indices")
        return idx, make_codec(value_part.codec).decode(value_part)


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
