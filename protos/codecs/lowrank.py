"""Low-rank compression, PowerSGD-style (Vogels et al. 2019), for tensors of 2+ dims.

The tensor is viewed as a matrix ``M`` of shape ``(shape[0], rest)``. One power
iteration from the previous round's right factor ``Q`` (kept in the encoder's state:
warm start) gives ``P = orth(M Q)`` and ``Q = M^T P``; the pair (``P``: ``n x r``,
``Q``: ``m x r``, float32 parts; ``ints = [r]``) is sent and decoded as ``P Q^T``. Biased: use error feedback.
Tensors where rank ``r`` would not save bytes (``r * (n + m) >= n * m``) cannot be
encoded by this codec; :func:`~fedge.protos.codecs.update.encode_update` sends them
with its fallback codec.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs.base import Codec, ints_of, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb

STATE_KEY = "powersgd_q"


@register("powersgd")
class PowerSGDCodec(Codec):
    """Rank-``rank`` factorisation with warm-started power iteration."""

    wire_params = (1, 0)

    def __init__(self, rank: int = 2, seed: int = 0) -> None:
        rank = int(rank)
        if rank < 1:
            raise ValueError(f"powersgd: rank must be >= 1, got {rank}")
        self.rank = rank
        self.seed = int(seed)

    def supports(self, array: np.ndarray) -> bool:
        if array.ndim < 2:
            return False
        n, m = array.shape[0], array.size // max(array.shape[0], 1)
        return self.rank * (n + m) < n * m

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        if not self.supports(array):
            raise ValueError(f"powersgd: tensor of shape {array.shape} is not compressible at rank {self.rank}")
        matrix = np.asarray(array, dtype=np.float32).reshape(array.shape[0], -1)
        q = state.get(STATE_KEY) if state is not None else None
        if q is None or q.shape != (matrix.shape[1], self.rank):
            q = np.random.default_rng(self.seed).standard_normal((matrix.shape[1], self.rank)).astype(np.float32)
        p, _ = np.linalg.qr(matrix @ q)
        q = matrix.T @ p
        if state is not None:
            state[STATE_KEY] = q
        msg.ints.append(self.rank)
        msg.parts.add(codec="fp32", shape=list(p.shape), dtype=pb.DTYPE_FLOAT32, data=p.astype("<f4").tobytes())
        msg.parts.add(codec="fp32", shape=list(q.shape), dtype=pb.DTYPE_FLOAT32, data=q.astype("<f4").tobytes())

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        (rank,) = ints_of(msg, 1)
        if len(shape) < 2 or rank < 1 or len(msg.parts) != 2:
            raise MalformedPayloadError(f"tensor {msg.name!r} (powersgd): bad rank or parts")
        n = shape[0]
        m = num_elements(shape) // n if n else 0
        factors = []
        for part, rows in zip(msg.parts, (n, m)):
            if list(part.shape) != [rows, rank] or len(part.data) != 4 * rows * rank:
                raise MalformedPayloadError(f"tensor {msg.name!r} (powersgd): factor of shape {list(part.shape)}")
            factors.append(np.frombuffer(part.data, dtype="<f4").reshape(rows, rank))
        p, q = factors
        return (p @ q.T).reshape(shape).astype(dtype, copy=False)
