"""The plain codec paths the fast ones replaced, kept as the reference both the speed
bench (``bench/codec_speed.py``) and the equality tests (``tests/test_codec_speed_paths.py``)
compare against: same inputs must give the same bytes and the same decoded values.

- global top-k: one selection for the per-tensor counts, then each tensor selected again;
- fp16: numpy's element-at-a-time float16 casts;
- deterministic uniform quantisation: one full-size pass per operation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedge.protos.codecs.sparse import TopKCodec, kept_count
from fedge.protos.v1 import tensor_pb2


def global_topk_update(arrays: Mapping[str, np.ndarray], ratio: float, values: str) -> tensor_pb2.CompressedUpdate:
    """Global top-k as first written: select for the counts, then select within each tensor."""
    names = list(arrays)
    sizes = np.array([np.asarray(arrays[n]).size for n in names], dtype=np.int64)
    total = int(sizes.sum())
    k = kept_count(total, ratio)
    flat = np.concatenate([np.abs(np.asarray(arrays[n], dtype=np.float32)).ravel() for n in names])
    chosen = np.argpartition(flat, total - k)[total - k :]
    counts = np.bincount(np.searchsorted(np.cumsum(sizes), chosen, side="right"), minlength=len(names))
    out = tensor_pb2.CompressedUpdate(kind=tensor_pb2.UPDATE_KIND_DELTA)
    for name, count in zip(names, counts):
        codec = TopKCodec(ratio, values)
        codec.keep = int(count)
        out.tensors.append(codec.encode(arrays[name], name))
    return out


def fp16_encode(x: np.ndarray) -> bytes:
    """numpy's float32 -> float16 cast, as bytes."""
    return np.ascontiguousarray(x, dtype="<f2").tobytes()


def fp16_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """numpy's float16 -> float32 cast."""
    return np.frombuffer(data, dtype="<f2").astype(np.float32).reshape(shape)


def uniform_encode(x: np.ndarray, bits: int, per_channel: bool) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Deterministic uniform quantisation in full-size passes: (codes as bytes, lo, scale)."""
    channels = x.shape[0] if (per_channel and x.ndim >= 2 and x.size) else 1
    rows = x.reshape(channels, -1)
    lo = rows.min(axis=1) if rows.shape[1] else np.zeros(channels, np.float32)
    hi = rows.max(axis=1) if rows.shape[1] else np.zeros(channels, np.float32)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(np.float32)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0).astype(np.float32)
    q = rows - lo[:, None]
    q *= inv[:, None]
    np.rint(q, out=q)
    np.clip(q, 0, levels, out=q)
    return q.astype(np.uint8).tobytes(), lo, scale


def uniform_decode(codes: bytes, lo: np.ndarray, scale: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The decoder of :func:`uniform_encode` (8-bit codes), in full-size passes."""
    q = np.frombuffer(codes, dtype=np.uint8).astype(np.float32).reshape(lo.size, -1)
    q *= scale[:, None]
    q += lo[:, None]
    return q.reshape(shape)


def feedback_residual(corrected: Mapping[str, np.ndarray], update: tensor_pb2.CompressedUpdate) -> dict[str, np.ndarray]:
    """Error feedback's residual as first written: decode the whole update densely, subtract."""
    from fedge.protos.codecs import decode_update

    sent = decode_update(update)
    return {name: corrected[name] - sent[name] for name in corrected}
